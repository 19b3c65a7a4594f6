"""What RigL costs in ``model.fit``, on tf_keras and on Keras 3 with the TensorFlow and JAX
backends: repeated ``fit`` calls of LeNet-300-100 (784-300-100-10, MNIST-shaped synthetic data, batches of 100)
or ResNet-20 (``--shape resnet20``, CIFAR-shaped batches of 128), SGD with momentum 0.9:

- dense:  the plain model, no callback;
- static: ``tfl.sparsify(model, 0.9, "erk")`` with the ``tfl.StaticSparse()`` callback;
- rigl:   the same sparse model with the ``tfl.RigL(delta_t=100)`` callback.

Each variant calls ``fit`` ``--calls`` times (``--epochs`` epochs of ``--steps`` steps
each), the variants taking turns call by call (the order rotates every round). The first
call of each variant includes tracing and compiling; the later ones show whether a ``fit``
call pays for that again (the RigL callback keeps its compiled steps for the next ``fit``
of the same compiled model). Ratios: the first calls, and the median over later rounds.
Without ``--flavour`` the script runs itself once per flavour (``tf_keras``, Keras 3 on
``tensorflow``, on ``jax``), each in its own process.
``benchmarks/keras3_dst_overhead.py`` times single steps instead.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FLAVOURS = ("tf_keras", "tensorflow", "jax")


def _models(flavour):
    """(keras module, shape name -> (builder, input shape)) of ``flavour``."""
    if flavour == "tf_keras":
        from tf_lottery._keras import keras
        from tf_lottery.training import models
        return keras, {"lenet": (lambda: models.lenet_300_100((784,), seed=0), (784,)),
                       "resnet20": (lambda: models.resnet20(seed=0), (32, 32, 3))}
    import keras
    from keras3_models import SHAPES
    return keras, SHAPES


def run(args):
    import numpy as np
    import tf_lottery as tfl
    keras, SHAPES = _models(args.flavour)
    batch = {"lenet": 100, "resnet20": 128}[args.shape]
    rng = np.random.default_rng(0)
    n = batch * args.steps
    x = rng.normal(size=(n, *SHAPES[args.shape][1])).astype("float32")
    y = rng.integers(0, 10, size=(n,)).astype("int32")
    total = args.calls * args.epochs * args.steps
    print(f"{args.flavour}: Keras {keras.__version__}, {os.cpu_count()} CPU cores, load "
          f"average {os.getloadavg()[0]:.2f} at start")
    print(f"{args.shape}, batch {batch}, 90% ERK, RigL delta_t={args.delta_t}: {args.calls} fit "
          f"calls x {args.epochs} epochs x {args.steps} steps per variant, taking turns")

    def variant(name):
        keras.utils.set_random_seed(0)
        model = SHAPES[args.shape][0]()
        callbacks = []
        if name != "dense":
            model = tfl.sparsify(model, 0.9, "erk", seed=0)
            callbacks = [tfl.StaticSparse() if name == "static" else
                         tfl.RigL(delta_t=args.delta_t, end_step=total, total_steps=total)]
        model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return name, model, callbacks

    variants = [variant(name) for name in ("dense", "static", "rigl")]
    times = {name: [] for name, _, _ in variants}
    for r in range(args.calls):
        for name, model, callbacks in variants[r % 3:] + variants[:r % 3]:
            start = time.perf_counter()
            model.fit(x, y, batch_size=batch, epochs=args.epochs, shuffle=False, verbose=0,
                      callbacks=callbacks)
            times[name].append(time.perf_counter() - start)
        print(f"  call {r + 1}/{args.calls}: " + ", ".join(
            f"{name} {t[-1]:.2f} s" for name, t in times.items()), flush=True)
    method = variants[2][2][0]
    assert [rec["step"] for rec in method.history][:2] == [args.delta_t, 2 * args.delta_t]

    def ratio(a, b, later=True):
        if not later:
            return times[a][0] / times[b][0]
        return statistics.median(p / q for p, q in zip(times[a][1:], times[b][1:]))

    tag = f"[{args.flavour}]"
    print()
    print(f"{tag} first fit call (traces, compiles): RigL/static = "
          f"{ratio('rigl', 'static', False):.3f}, static/dense = "
          f"{ratio('static', 'dense', False):.3f}")
    print(f"{tag} later fit calls (median of {args.calls - 1}): RigL/static = "
          f"{ratio('rigl', 'static'):.3f}, static/dense = {ratio('static', 'dense'):.3f}, "
          f"RigL/dense = {ratio('rigl', 'dense'):.3f}")
    print(f"{tag} {len(method.history)} RigL updates logged, RigL update traces: "
          f"{method.update_traces}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flavour", choices=FLAVOURS,
                        help="run in this process: tf_keras, or Keras 3 with this backend "
                        "(default: each, in a process of its own)")
    parser.add_argument("--shape", choices=("lenet", "resnet20"), default="lenet")
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
    parser.add_argument("--delta-t", type=int, default=100)
    args = parser.parse_args(argv)
    if args.calls < 2:
        parser.error("--calls must be at least 2 (the first call includes compiling)")
    if args.flavour:
        if args.flavour != "tf_keras" and os.environ.get("KERAS_BACKEND") != args.flavour:
            raise SystemExit(f"set KERAS_BACKEND={args.flavour} (the backend is fixed when "
                             "Keras is imported), or run without --flavour")
        return run(args)
    from processes import run_each
    return run_each(__file__, "--flavour", FLAVOURS,
                    argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
