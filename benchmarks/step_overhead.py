#!/usr/bin/env python
"""Training-step overhead of tf-lottery's MaskedLayer against dense tf_keras and tfmot.

Two shapes of work, each trained with ``model.fit`` on synthetic data (one fixed batch,
repeated) in three variants:

- ``dense``: the plain tf_keras model;
- ``ours``:  ``tfl.sparsify(model, 0.9, "erk")`` (MaskedLayer: a training step computes
  with the raw weights, whose masked entries are 0, and masks their gradient; a write
  from outside sets a flag that makes the next step write ``weight * mask`` back);
- ``tfmot``: ``tfmot.sparsity.keras.prune_low_magnitude(model, ConstantSparsity(0.9, 0))``
  with the ``UpdatePruningStep`` callback (it also re-ranks weights every 100 steps).

Shapes: LeNet-300-100 (784-300-100-10, batch 60, Adam) and a CIFAR-shaped ResNet-20
(32x32x3, batch 128, SGD momentum 0.9; ``tf_lottery.training.models.resnet20`` if
importable, else an inline builder of the same network).

Every variant is built and warmed up once (a short fit, so tracing is excluded), then the
variants are timed round-robin in this one process: each round fits every variant for a
fixed number of steps, in turn (the order rotates every round). A callback times every
step (batch begin to batch end, so the fixed cost of starting a fit is left out); the
10th percentile of those step times is the headline number (on a shared machine the
fastest steps are the least disturbed ones), with the median, the best whole fit and the
best process-CPU time per step beside it. Ratios are variant / dense per shape. Many short
rounds rather than few long ones: a slow spell on the machine then hits every variant.

    python benchmarks/step_overhead.py                 # default run, ~5-7 min on 2 cores
    python benchmarks/step_overhead.py --quick         # ~2-3 min
    python benchmarks/step_overhead.py --shapes lenet --rounds 40 --lenet-steps 100
    python benchmarks/step_overhead.py --compile graph # the model.compile default only

The "mask state" column is the memory of the variables each method adds: our float32
masks; tfmot's masks plus one threshold per weight and one int64 step per wrapper.

Wall-clock ratios need a quiet machine: with other jobs on the same 2 cores, single
runs swing by +-10% or more (compare the p10, median and CPU columns before trusting one).
"""
import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_lottery as tfl  # noqa: E402  (selects tf_keras; must precede other Keras imports)
from tf_lottery._keras import keras, tf, tfmot  # noqa: E402
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (  # noqa
    collect_prunable_layers)

SPARSITY = 0.9


# ------------------------------------------------------------------------------- models

def lenet_300_100():
    inputs = keras.Input((784,), name="image")
    x = keras.layers.Dense(300, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="lenet_300_100")


def _resnet20_inline():
    """CIFAR ResNet-20: conv16, 3 stages x 3 basic blocks (16/32/64), GAP, logits."""
    def conv_bn(x, filters, kernel, strides, name):
        x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False,
                                kernel_initializer="he_normal", name=f"{name}_conv")(x)
        return keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.ReLU()(conv_bn(inputs, 16, 3, 1, "stem"))
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(1, 4):
            strides = 2 if stage > 1 and block == 1 else 1
            name = f"s{stage}b{block}"
            y = keras.layers.ReLU()(conv_bn(x, filters, 3, strides, f"{name}_1"))
            y = conv_bn(y, filters, 3, 1, f"{name}_2")
            if strides != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, 1, strides, f"{name}_short")
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="resnet20")


def resnet20():
    try:
        from tf_lottery.training.models import resnet20 as library_resnet20
    except Exception as error:  # noqa: BLE001  (module may not exist yet, or fail to import)
        print(f"# tf_lottery.training.models.resnet20 unavailable ({error!r}); "
              "using the inline ResNet-20", file=sys.stderr)
        return _resnet20_inline()
    return library_resnet20(input_shape=(32, 32, 3), num_classes=10)


SHAPES = {
    # name: (builder, input shape, batch size, optimizer factory)
    "lenet": (lenet_300_100, (784,), 60, lambda: keras.optimizers.Adam(1e-3)),
    "resnet20": (resnet20, (32, 32, 3), 128,
                 lambda: keras.optimizers.SGD(0.01, momentum=0.9)),
}


# ----------------------------------------------------------------------------- variants

class StepTimer(keras.callbacks.Callback):
    """Wall time of every training step (batch begin to batch end), in seconds.

    It is the first callback, so a variant's own per-batch callback work (tfmot's
    UpdatePruningStep assigns the step counters in on_train_batch_begin) is inside.
    """

    def __init__(self):
        super().__init__()
        self.steps, self._start = [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(time.perf_counter() - self._start)


class Run:
    """One (shape, variant): a compiled model, its data and callbacks."""

    def __init__(self, shape: str, variant: str, seed: int = 0, jit_compile: bool = False):
        build, input_shape, batch, optimizer = SHAPES[shape]
        self.shape, self.variant, self.batch = shape, variant, batch
        keras.utils.set_random_seed(seed)
        model = build()
        self.callbacks = []
        if variant == "ours":
            model = tfl.sparsify(model, SPARSITY, "erk", seed=seed)
        elif variant == "tfmot":
            schedule = tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0)
            model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
            self.callbacks = [tfmot.sparsity.keras.UpdatePruningStep()]
        elif variant != "dense":
            raise ValueError(f"unknown variant {variant!r}")
        model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=jit_compile)
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batch,) + input_shape).astype("float32")
        y = rng.integers(0, 10, size=(batch,)).astype("int32")
        self.data = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.model = model
        self.timer = StepTimer()

    def fit(self, steps: int):
        """Fits ``steps`` steps; returns (wall seconds, process CPU seconds)."""
        start, start_cpu = time.perf_counter(), time.process_time()
        self.model.fit(self.data, epochs=1, steps_per_epoch=steps,
                       callbacks=[self.timer] + self.callbacks, verbose=0)
        return time.perf_counter() - start, time.process_time() - start_cpu

    def warm_up(self, steps: int):
        result = self.fit(steps)
        self.timer.steps.clear()
        return result

    def mask_state_bytes(self) -> int:
        """Bytes of the variables each pruning method adds (masks; tfmot: + thresholds, step)."""
        def size(variable):
            return int(np.prod(variable.shape)) * variable.dtype.size

        if self.variant.startswith("ours"):
            return sum(size(m) for layer in tfl.masked_layers(self.model)
                       for _, m in layer.masked_weights)
        if self.variant == "tfmot":
            total = 0
            for layer in collect_prunable_layers(self.model):
                total += sum(size(m) + size(t) for _, m, t in layer.pruning_vars)
                total += size(layer.pruning_step)
            return total
        return 0

    def describe(self) -> str:
        if self.variant.startswith("ours"):
            masked = tfl.masked_layers(self.model)
            report = tfl.sparsity_report(self.model)[-1]
            return (f"{len(masked)} MaskedLayers, {report['params']:,} prunable weights, "
                    f"sparsity {report['sparsity']:.4f}")
        if self.variant == "tfmot":
            wrappers = collect_prunable_layers(self.model)
            pruned = [w for w in wrappers if w.pruning_vars]
            return f"{len(wrappers)} PruneLowMagnitude wrappers ({len(pruned)} with weights)"
        return f"{self.model.count_params():,} parameters"


# --------------------------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="lenet,resnet20",
                        help="comma-separated: lenet, resnet20 (default: both)")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--lenet-steps", type=int, default=50,
                        help="steps per timed LeNet fit (default 50)")
    parser.add_argument("--resnet-steps", type=int, default=2,
                        help="steps per timed ResNet-20 fit (default 2)")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="steps of the untimed first fit (tracing) (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="8 rounds, 40 LeNet / 2 ResNet-20 steps")
    parser.add_argument("--compile", default="graph,xla",
                        help="comma-separated step compilations, each timed as its own case: "
                        "graph (model.compile default, TF graph executor) and xla "
                        "(model.compile(jit_compile=True)) (default: both)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.lenet_steps, args.resnet_steps = 8, 40, 2
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        parser.error(f"unknown shapes {unknown}; choose from {sorted(SHAPES)}")
    variants = ["dense", "ours", "tfmot"]
    modes = [m.strip() for m in args.compile.split(",") if m.strip()]
    if not modes or set(modes) - {"graph", "xla"}:
        parser.error(f"--compile takes graph and/or xla, got {args.compile!r}")
    # a case is a shape under one compilation: "lenet" (graph) or "lenet+xla"
    cases = [shape + ("+xla" if mode == "xla" else "") for shape in shapes for mode in modes]
    steps = {case: {"lenet": args.lenet_steps, "resnet20": args.resnet_steps}[case.split("+")[0]]
             for case in cases}
    shapes = cases

    print(f"# TensorFlow {tf.__version__}, tf_keras {keras.__version__}, "
          f"tfmot {tfmot.__version__ if hasattr(tfmot, '__version__') else '?'}, "
          f"tf_lottery {tfl.__version__}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"# rounds {args.rounds}, steps per fit {steps}, warm-up {args.warmup_steps} steps")
    runs = {}
    for shape in shapes:
        for variant in variants:
            run = Run(shape.split("+")[0], variant, jit_compile=shape.endswith("+xla"))
            started = time.perf_counter()
            run.warm_up(args.warmup_steps)
            runs[shape, variant] = run
            print(f"# built + warmed {shape:8s} {variant:10s} in "
                  f"{time.perf_counter() - started:5.1f}s: {run.describe()}", flush=True)

    times = {key: [] for key in runs}
    cpu_times = {key: [] for key in runs}
    wall = time.perf_counter()
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for shape in shapes:
            for variant in order:  # rotated each round: no variant always runs first
                elapsed, cpu = runs[shape, variant].fit(steps[shape])
                times[shape, variant].append(elapsed)
                cpu_times[shape, variant].append(cpu)
        if (round_ + 1) % max(1, args.rounds // 5) == 0 or round_ + 1 == args.rounds:
            print(f"# round {round_ + 1}/{args.rounds}: " + ", ".join(
                f"{s}/{v} {times[s, v][-1] / steps[s] * 1e3:.2f}" for s in shapes
                for v in variants) + " ms/step (this fit, incl. fit overhead)", flush=True)
    print(f"# timed rounds took {time.perf_counter() - wall:.0f}s; load average "
          f"{os.getloadavg()[0]:.2f} at end\n")

    def p(values, q):
        return float(np.percentile(values, q))

    print("per step (StepTimer, every timed step): p10 and median ms; per fit: best round "
          "wall ms/step; cpu: best round of process CPU time (all threads) ms/step")
    header = (f"{'case':13s} {'variant':11s} {'step p10':>9s} {'p10/dense':>9s} "
              f"{'step med':>9s} {'med/dense':>9s} {'best fit':>9s} {'fit/dense':>9s} "
              f"{'cpu':>9s} {'cpu/dense':>9s} {'mask state':>12s}")
    print(header)
    print("-" * len(header))
    for shape in shapes:
        dense = runs[shape, "dense"].timer.steps
        p10_dense, med_dense = p(dense, 10), p(dense, 50)
        fit_dense = min(times[shape, "dense"]) / steps[shape]
        cpu_dense = min(cpu_times[shape, "dense"]) / steps[shape]
        for variant in variants:
            step_times = runs[shape, variant].timer.steps
            p10, med = p(step_times, 10), p(step_times, 50)
            fit = min(times[shape, variant]) / steps[shape]
            cpu = min(cpu_times[shape, variant]) / steps[shape]
            memory = runs[shape, variant].mask_state_bytes()
            print(f"{shape:13s} {variant:11s} {p10 * 1e3:9.2f} {p10 / p10_dense:9.3f} "
                  f"{med * 1e3:9.2f} {med / med_dense:9.3f} {fit * 1e3:9.2f} "
                  f"{fit / fit_dense:9.3f} {cpu * 1e3:9.2f} {cpu / cpu_dense:9.3f} "
                  f"{memory / 1024:8.1f} KiB")
    print()
    print("median over rounds of the per-round ratio (each round fits every variant once, "
          "round-robin): the figure least moved by a slow spell")
    for shape in shapes:
        dense_fits = np.asarray(times[shape, "dense"])
        print(f"{shape}: " + ", ".join(
            f"{v}/dense {np.median(np.asarray(times[shape, v]) / dense_fits):.3f}"
            for v in variants if v != "dense"))
    print()
    for shape in shapes:
        dense_fits = np.asarray(times[shape, "dense"])
        ratio = {v: float(np.median(np.asarray(times[shape, v]) / dense_fits)) for v in variants}
        ours, tfmot_ = ratio["ours"], ratio["tfmot"]
        verdict = "MEETS" if ours <= 1.03 and ours <= tfmot_ else "MISSES"
        print(f"{shape}: ours/dense {ours:.3f}, tfmot/dense {tfmot_:.3f} -> {verdict} the "
              "target (ours/dense <= 1.03 and ours <= tfmot; median per-round ratio)")
        ours_bytes = runs[shape, "ours"].mask_state_bytes()
        tfmot_bytes = runs[shape, "tfmot"].mask_state_bytes()
        print(f"{shape}: mask state ours {ours_bytes:,} B vs tfmot {tfmot_bytes:,} B "
              f"(mask + threshold + step)")


if __name__ == "__main__":
    main()
