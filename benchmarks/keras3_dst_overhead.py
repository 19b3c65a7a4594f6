"""Training-step cost of RigL and static sparse training against dense training on Keras 3,
per backend (TensorFlow, JAX), on LeNet-300-100 (784-300-100-10, MNIST-shaped synthetic
batches of 100) or ResNet-20 (``--shape resnet20``: CIFAR-shaped batches of 128, as
``benchmarks/rigl_overhead.py`` times the tf_keras path), SGD with momentum 0.9:

- dense:  the plain model, Keras' own compiled train step;
- static: ``tfl.sparsify(model, 0.9, "erk")`` with the plain optimizer (the masked
  layers; what ``tfl.StaticSparse`` trains with);
- rigl:   the same sparse model with what the ``tfl.RigL(delta_t=100)`` callback installs
  when ``fit`` begins (``tfl.SparseOptimizer`` around SGD; on JAX, the ordinary and the
  update step compiled apart): dense gradients, masked update, and the mask update at
  every 100th step.

Each variant's compiled train function (the one ``model.fit`` calls every step) is called
directly, interleaved step by step (the order rotates every round), each call timed to
completion. A round is ``delta_t`` steps per variant with the real step counter, so each
RigL round holds exactly one mask update; ratios are medians over rounds of the summed
round times. Without ``--backend`` the script runs itself once per backend, each in its
own process (the Keras backend is fixed per process), and prints both reports.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _variant(name, args, x, y):
    import keras
    import tf_lottery as tfl
    from keras3_models import SHAPES
    from tf_lottery.keras3.dst_fit import fit_begin
    keras.utils.set_random_seed(0)
    model = SHAPES[args.shape][0]()
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    if name != "dense":
        model = tfl.sparsify(model, args.sparsity, args.distribution, seed=0)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if name == "rigl":  # what the callback does when fit begins
        model.optimizer.build(model.trainable_variables)
        fit_begin(tfl.RigL(delta_t=args.delta_t, end_step=10 ** 8), model, None)
    return _Runner(name, model, x, y)


class _Runner:
    """Calls one model's compiled train function step by step."""

    def __init__(self, name, model, x, y):
        import keras
        self.name, self.model = name, model
        self.backend = keras.config.backend()
        self.times = []
        self.count = 0  # optimizer steps taken (RigL updates at multiples of delta_t)
        self.updates = []  # indices into times of RigL's update steps
        if not model.optimizer.built:  # (fit builds it before its first step)
            model.optimizer.build(model.trainable_variables)
        model.make_train_function()  # (keeps the one the RigL callback installed)
        if self.backend == "jax":
            import itertools
            import jax.numpy as jnp
            self.iterator = itertools.repeat((jnp.asarray(x), jnp.asarray(y)))
            # No public API runs one compiled JAX step: fit keeps this state tuple itself.
            self.state = model._get_jax_state(trainable_variables=True,
                                              non_trainable_variables=True,
                                              optimizer_variables=True, metrics_variables=True)
        else:
            import tensorflow as tf
            self.iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())

    def step(self):
        start = time.perf_counter()
        if self.backend == "jax":
            logs, self.state = self.model.train_function(self.state, self.iterator)
        else:
            logs = self.model.train_function(self.iterator)
        float(logs["loss"])  # wait for the step to finish
        self.times.append(time.perf_counter() - start)
        self.count += 1

    def finish(self):
        """Writes the JAX state back to the variables (and the masks, see SparseOptimizer)."""
        if self.backend == "jax":
            model = self.model
            groups = (model.trainable_variables, model.non_trainable_variables,
                      model.optimizer.variables, model.metrics_variables)
            for variables, values in zip(groups, self.state):
                for variable, value in zip(variables, values):
                    variable.assign(value)
        if hasattr(self.model.optimizer, "sync_masks"):
            self.model.optimizer.sync_masks()


def run(args):
    import keras
    import numpy as np
    import tf_lottery as tfl
    rng = np.random.default_rng(0)
    from keras3_models import SHAPES
    batch = args.batch or {"lenet": 100, "resnet20": 128}[args.shape]
    x = rng.normal(size=(batch, *SHAPES[args.shape][1])).astype("float32")
    y = rng.integers(0, 10, size=(batch,)).astype("int32")
    print(f"Keras {keras.__version__}, backend {keras.config.backend()}, {os.cpu_count()} CPU "
          f"cores, load average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.shape}, batch {batch}, sparsity {args.sparsity} ({args.distribution}), "
          f"RigL delta_t={args.delta_t}: {args.rounds} rounds x {args.delta_t} steps per "
          "variant, interleaved step by step")
    begin = time.perf_counter()
    variants = [_variant(n, args, x, y) for n in ("dense", "static", "rigl")]
    rigl = variants[2]
    masks_before = tfl.get_masks(rigl.model)  # (before JAX's steps take the buffers)
    for v in variants:  # trace and warm up
        for _ in range(3):
            v.step()
        v.times.clear()
    delta_t = args.delta_t
    print(f"  built and traced in {time.perf_counter() - begin:.0f} s", flush=True)
    sums = {v.name: [] for v in variants}
    for r in range(-args.warmup_rounds, args.rounds):  # (JAX compiles the update step late)
        marks = {v.name: len(v.times) for v in variants}
        order = variants[r % 3:] + variants[:r % 3]
        for _ in range(args.delta_t):
            for v in order:
                if v is rigl and (v.count + 1) % delta_t == 0:
                    v.updates.append(len(v.times))
                v.step()
        if r < 0:
            for v in variants:
                del v.times[marks[v.name]:]
            rigl.updates.clear()
            print("  warm-up round done", flush=True)
            continue
        for v in variants:
            sums[v.name].append(sum(v.times[marks[v.name]:]))
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v.name} {1000 * sums[v.name][-1] / args.delta_t:.2f} ms/step" for v in variants),
            flush=True)
    for v in variants:
        v.finish()
    updates = rigl.model.optimizer.update_count
    changed = sum(int((masks_before[k] != m).sum()) for k, m in tfl.get_masks(rigl.model).items())
    assert updates >= args.rounds and changed > 0, (updates, changed)

    def ratio(a, b):
        return statistics.median(p / q for p, q in zip(sums[a], sums[b]))

    static = variants[1]
    update_set = set(rigl.updates)
    ordinary = [i for i in range(len(rigl.times)) if i not in update_set]
    r_ordinary = statistics.median(rigl.times[i] / static.times[i] for i in ordinary)
    update_cost = statistics.median(rigl.times[i] / statistics.median(static.times)
                                    for i in rigl.updates)
    print()
    for v in variants:
        print(f"{v.name:<8} median step {1000 * statistics.median(v.times):.3f} ms")
    print(f"RigL ordinary step / static step = {r_ordinary:.3f} (median of {len(ordinary)} "
          f"pairs); a RigL update step costs {update_cost:.1f} static steps (median of "
          f"{len(rigl.updates)})")
    print(f"[{keras.config.backend()}] RigL/static  = {ratio('rigl', 'static'):.3f}   "
          f"(target <= 1.05 at delta_t={args.delta_t})")
    print(f"[{keras.config.backend()}] RigL/dense   = {ratio('rigl', 'dense'):.3f}")
    print(f"[{keras.config.backend()}] static/dense = {ratio('static', 'dense'):.3f}")
    print(f"{updates} RigL mask updates, {changed} mask entries changed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax"),
                        help="run in this process with this backend (default: both, each "
                        "in its own process)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup-rounds", type=int, default=1,
                        help="rounds run first and not counted (tracing, JAX's late compile)")
    parser.add_argument("--shape", choices=("lenet", "resnet20"), default="lenet")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: 100 (lenet), 128 (resnet20)")
    parser.add_argument("--delta-t", type=int, default=100)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--distribution", default="erk")
    args, rest = parser.parse_known_args(argv)
    if args.backend:
        if os.environ.get("KERAS_BACKEND") != args.backend:
            raise SystemExit(f"set KERAS_BACKEND={args.backend} (the backend is fixed when "
                             "Keras is imported), or run without --backend")
        return run(args)
    from processes import run_each
    return run_each(__file__, "--backend", ("tensorflow", "jax"),
                    argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
