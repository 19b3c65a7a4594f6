"""Step cost of ``tfl.SparseOptimizer`` in a custom training loop, in one process.

LeNet-300-100 on MNIST-shaped synthetic data (batch 60), SGD with momentum 0.9, 90% ERK
masks; one ``tf.function`` step (``tf.GradientTape`` + ``apply_gradients``) per variant:

- plain:  the sparsified model with the plain optimizer (no mask updates);
- static: ``tfl.SparseOptimizer(optimizer, model, tfl.StaticSparse())`` (gradient masking
  through the wrapper, no update path);
- rigl:   ``tfl.SparseOptimizer(optimizer, model, tfl.RigL(delta_t=100))``: gate, one
  all-reduce, masked update and the in-graph mask update every 100th step.

Variants run interleaved step by step (the order rotates every round) so that they see
the same machine load; ratios are medians of the ratios of neighbouring steps. RigL's
amortised ratio is ``((delta_t - 1) * ordinary + update) / delta_t``. Prints rigl/plain
and static/plain.
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


def _variant(name, delta_t, x, y):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
                              keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)])
    model = tfl.sparsify(model, 0.9, "erk", seed=0)
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    if name == "static":
        opt = tfl.SparseOptimizer(opt, model, tfl.StaticSparse())
    elif name == "rigl":
        big = 10 ** 9
        opt = tfl.SparseOptimizer(opt, model, tfl.RigL(delta_t=delta_t, end_step=big))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return model, opt, step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--delta-t", type=int, default=100)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(60, 784)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=(60,)).astype("int32"))
    names = ("plain", "static", "rigl")
    variants = {n: _variant(n, args.delta_t, x, y) for n in names}
    times = {n: [] for n in names}
    updates = []
    print(f"tf {tf.__version__}, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    for n in names:  # trace and warm up
        for _ in range(3):
            float(variants[n][2]())
    rigl_opt = variants["rigl"][1]
    for r in range(args.rounds):
        # the second RigL step of this round updates masks
        rigl_opt.iterations.assign((r + 1) * args.delta_t - 2)
        rigl_opt.refresh_gate()
        order = names[r % 3:] + names[:r % 3]
        for s in range(args.steps):
            for n in order:
                start = time.perf_counter()
                float(variants[n][2]())
                times[n].append(time.perf_counter() - start)
            if s == 1:
                updates.append(len(times["rigl"]) - 1)
    assert rigl_opt.method.dense_gradient_steps == args.rounds, "dense gradient off-update"
    ratio = lambda a, b, idx: statistics.median(times[a][i] / times[b][i] for i in idx)  # noqa
    every = range(len(times["plain"]))
    ordinary = [i for i in every if i not in set(updates)]
    r_ordinary, r_update = ratio("rigl", "plain", ordinary), ratio("rigl", "plain", updates)
    amortised = ((args.delta_t - 1) * r_ordinary + r_update) / args.delta_t
    print(f"median step: " + ", ".join(
        f"{n} {1000 * statistics.median(times[n]):.2f} ms" for n in names))
    print(f"static/plain = {ratio('static', 'plain', every):.3f}")
    print(f"rigl/plain   = {amortised:.3f} amortised over delta_t={args.delta_t} (ordinary "
          f"step {r_ordinary:.3f}, update step {r_update:.3f})")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
