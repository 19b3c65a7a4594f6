"""Training-step cost of RigL against static sparse and dense training, in one process.

ResNet-20 on CIFAR-shaped synthetic data (batch 128 by default), SGD with momentum 0.9:

- dense:  the plain model, Keras' own train function;
- static: ``tfl.sparsify(model, 0.9, "erk")`` (Keras' own train function on masked
  layers: what ``tfl.dst.StaticSparse`` trains with);
- rigl:   the same sparse model with the train function that ``tfl.dst.RigL(delta_t=100)``
  installs (dense gradient and in-graph mask update at every 100th step).

Each variant's compiled train function (the one ``model.fit`` calls every step) is called
directly, **interleaved step by step** (dense, static, rigl, dense, static, rigl, ...; the
order rotates every round) so that all three see the same machine load, and every call is timed to completion. Ratios
are medians of the ratios of neighbouring steps, which keeps them stable on a shared
machine where absolute times drift.

``--mode amortised`` (default, ~5 minutes on 2 CPU cores): ``--rounds`` rounds of
``--steps`` steps per variant; before each round RigL's step counter is moved so that its
second step of the round is a mask-update step. The amortised RigL/static ratio is
``((delta_t - 1) * ordinary + update) / delta_t`` with ``ordinary`` and ``update`` the
median RigL/static ratios of ordinary and of update steps.

``--mode direct``: rounds of exactly ``delta_t`` steps per variant with the real step
counter (each RigL round holds exactly one update); the ratio of summed round times
(median over rounds). The literal measurement, but ``3 * rounds * delta_t`` steps long.

Prints the ratios RigL/static, RigL/dense and static/dense.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tf_lottery as tfl  # noqa: E402
from tf_lottery._keras import keras, tf  # noqa: E402
from tf_lottery.dst import RigL  # noqa: E402


def resnet20(seed):
    try:
        from tf_lottery.training.models import resnet20 as builder
        return builder(input_shape=(32, 32, 3), num_classes=10, seed=seed)
    except ImportError:  # a minimal inline CIFAR ResNet-20
        keras.utils.set_random_seed(seed)
        inputs = keras.Input((32, 32, 3))

        def conv_bn(x, filters, strides=1, kernel=3):
            x = keras.layers.Conv2D(filters, kernel, strides, padding="same", use_bias=False)(x)
            return keras.layers.BatchNormalization()(x)

        x = keras.layers.ReLU()(conv_bn(inputs, 16))
        for stage, filters in enumerate((16, 32, 64)):
            for block in range(3):
                strides = 2 if stage and not block else 1
                y = keras.layers.ReLU()(conv_bn(x, filters, strides))
                y = conv_bn(y, filters)
                if strides != 1 or x.shape[-1] != filters:
                    x = conv_bn(x, filters, strides, kernel=1)
                x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x))


class Variant:
    def __init__(self, name, args, dataset):
        self.name = name
        model = resnet20(seed=0)
        if name != "dense":
            model = tfl.sparsify(model, args.sparsity, args.distribution, seed=0)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self.model = model
        self.callback = None
        if name == "rigl":
            big = 10 ** 9
            self.callback = RigL(delta_t=args.delta_t, end_step=big, total_steps=big)
            # what fit does before its first step: install the train step
            self.callback.set_model(model)
            self.callback.set_params({"epochs": 1, "steps": big, "verbose": 0})
            self.callback.on_train_begin()
            self.function = model.train_function
        else:
            self.function = model.make_train_function()
        self.iterator = iter(dataset)
        self.times = []  # (seconds, is_update_step)

    def step(self, delta_t):
        is_update = (self.name == "rigl"
                     and (int(self.model.optimizer.iterations.numpy()) + 1) % delta_t == 0)
        start = time.perf_counter()
        logs = self.function(self.iterator)
        float(logs["loss"])  # wait for the step to finish
        self.times.append((time.perf_counter() - start, is_update))


def _median_ratio(a, b):
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("amortised", "direct"), default="amortised")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4,
                        help="steps per variant per round in amortised mode")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--delta-t", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--distribution", default="erk")
    args = parser.parse_args(argv)
    steps = args.steps if args.mode == "amortised" else args.delta_t

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch,)).astype("int32")
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"ResNet-20, batch {args.batch}, sparsity {args.sparsity} ({args.distribution}), "
          f"RigL delta_t={args.delta_t}, mode {args.mode}: {args.rounds} rounds x {steps} "
          "steps per variant, interleaved step by step")
    begin = time.perf_counter()
    variants = [Variant(n, args, dataset) for n in ("dense", "static", "rigl")]
    dense, static, rigl = variants
    for v in variants:  # trace and warm up
        for _ in range(2):
            v.step(args.delta_t)
        v.times.clear()
    rigl.model.optimizer.iterations.assign(0)
    print(f"  built and traced in {time.perf_counter() - begin:.0f} s", flush=True)

    masks_before = tfl.get_masks(rigl.model)
    round_sums = {v.name: [] for v in variants}
    for r in range(args.rounds):
        if args.mode == "amortised":
            # the second RigL step of this round is an update step
            rigl.model.optimizer.iterations.assign((r + 1) * args.delta_t - 2)
        marks = {v.name: len(v.times) for v in variants}
        order = variants[r % 3:] + variants[:r % 3]  # no variant always runs first
        for _ in range(steps):
            for v in order:
                v.step(args.delta_t)
        for v in variants:
            round_sums[v.name].append(sum(t for t, _ in v.times[marks[v.name]:]))
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v.name} {1000 * round_sums[v.name][-1] / steps:.0f} ms/step" for v in variants)
            + f"  ({time.perf_counter() - begin:.0f} s)", flush=True)

    updates = [i for i, (_, u) in enumerate(rigl.times) if u]
    assert len(updates) == args.rounds, "expected one RigL update per round"
    changed = sum(int((masks_before[k] != m).sum()) for k, m in tfl.get_masks(rigl.model).items())
    assert changed > 0, "the RigL masks did not change"
    if args.delta_t > 2:  # (no update among the warm-up steps)
        assert rigl.callback.dense_gradient_steps == len(updates), "dense gradient off-update"

    t = {v.name: [s for s, _ in v.times] for v in variants}
    ordinary = [i for i in range(len(rigl.times)) if i not in set(updates)]
    r_ordinary = _median_ratio([t["rigl"][i] for i in ordinary], [t["static"][i] for i in ordinary])
    r_update = _median_ratio([t["rigl"][i] for i in updates], [t["static"][i] for i in updates])
    static_dense = _median_ratio(t["static"], t["dense"])
    if args.mode == "amortised":
        rigl_static = ((args.delta_t - 1) * r_ordinary + r_update) / args.delta_t
    else:
        rigl_static = _median_ratio(round_sums["rigl"], round_sums["static"])
        static_dense = _median_ratio(round_sums["static"], round_sums["dense"])
    rigl_dense = rigl_static * static_dense

    print()
    print(f"{'variant':<8}{'median step (ms)':>18}")
    for v in variants:
        print(f"{v.name:<8}{1000 * statistics.median(t[v.name]):>18.1f}")
    print(f"RigL ordinary step / static step: {r_ordinary:.3f} (median of {len(ordinary)} "
          f"pairs); RigL update step / static step: {r_update:.3f} ({len(updates)} updates, "
          f"one every {args.delta_t} steps)")
    print()
    print(f"RigL/static  = {rigl_static:.3f}   (target <= 1.03, amortised over delta_t="
          f"{args.delta_t})")
    print(f"RigL/dense   = {rigl_dense:.3f}")
    print(f"static/dense = {static_dense:.3f}")
    print(f"RigL update traced {rigl.callback.update_traces} time(s) for {len(updates)} "
          f"updates; {changed} mask entries changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
