"""IMP throughput: our runner against a minimal hand-written loop doing the same trainings.

    python benchmarks/imp_throughput.py [--levels=20] [--rounds=1]

Both sides run the digits main job (``gin_configs/digits_lenet300100_imp.gin``):
LeNet-300-100, Adam 1.2e-3, batch 60, 1,140 iterations (60 epochs of 1,131 digits) per
training, 20% of the hidden layers' and 10% of the output layer's surviving weights
pruned per level, rewinding to theta_0, and a reinit control at every level >= 1, so
``2 * levels - 1`` trainings (39 at 20 levels).

- *hand*: plain tf_keras/TF. One unwrapped model, one mask variable per kernel applied by
  multiplying after every optimizer step, one Adam whose variables are zeroed between
  trainings, one ``tf.function`` train step reused by every training; test accuracy at the
  end of each training; no validation.
- *ours*: ``train.imp_experiment`` configured by the gin file, as ``tf-lottery train``
  runs it (validation every 100 iterations for the early-stopping iteration, results
  written to a temporary folder).

Rounds alternate hand, ours in one process. Prints each wall time and process CPU time
(all threads; less sensitive than wall time to other processes on a shared machine), the
ratios ours/hand of both, and the test accuracies of the last level (they differ:
different random draws).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import tf_lottery  # noqa: E402,F401
from tf_lottery._keras import keras, tf  # noqa: E402
from tf_lottery.training import datasets, models, train  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "gin_configs", "digits_lenet300100_imp.gin")
ITERATIONS, BATCH = 1140, 60


def hand(levels: int, seed: int = 0) -> dict:
    """The hand loop; returns wall seconds, trainings and the last level's accuracies."""
    start, cpu = time.perf_counter(), time.process_time()
    tf.random.set_seed(seed)
    x_train, y_train = datasets.digits_split("train[:90%]")
    x_test, y_test = datasets.digits_split("test")
    model = models.lenet_300_100(input_shape=(8, 8, 1), num_classes=10)
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    masks = [tf.Variable(tf.ones_like(k), trainable=False) for k in kernels]
    fractions = [0.2] * (len(kernels) - 1) + [0.1]
    optimizer = keras.optimizers.Adam(1.2e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    data = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
            .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
            .batch(BATCH).repeat().prefetch(2))
    batches = iter(data)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        for kernel, mask in zip(kernels, masks):
            kernel.assign(kernel * mask)

    @tf.function
    def correct(x, y):
        return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(model(x, training=False), -1),
                                              tf.cast(y, tf.int64)), tf.int32))

    def training(weights):
        model.set_weights(weights)
        for kernel, mask in zip(kernels, masks):
            kernel.assign(kernel * mask)
        for variable in optimizer.variables():
            variable.assign(tf.zeros_like(variable))
        for _ in range(ITERATIONS):
            step(*next(batches))
        return int(correct(x_test, y_test)) / len(y_test)

    theta_0 = model.get_weights()
    reinit_model = models.lenet_300_100(input_shape=(8, 8, 1), num_classes=10)
    reinit = reinit_model.get_weights()
    trainings, accuracies = 0, {}
    for level in range(levels):
        if level:
            for kernel, mask, fraction in zip(kernels, masks, fractions):
                alive = np.abs(kernel.numpy()[mask.numpy() > 0])
                cut = np.sort(alive)[int(round(fraction * alive.size))]
                mask.assign(tf.cast(tf.abs(kernel) >= cut, tf.float32) * mask)
        accuracies = {"ticket": training(theta_0)}
        trainings += 1
        if level:
            ticket = model.get_weights()
            accuracies["reinit"] = training(reinit)
            trainings += 1
            model.set_weights(ticket)  # the next level prunes the ticket's trained weights
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "trainings": trainings,
            "remaining": float(sum(m.numpy().sum() for m in masks)
                               / sum(int(np.prod(m.shape)) for m in masks)),
            "accuracies": accuracies}


def ours(levels: int, folder: str) -> dict:
    """The runner as the binary configures it; returns what ``hand`` returns."""
    import gin
    start, cpu = time.perf_counter(), time.process_time()
    gin.clear_config()
    train.parse_gin([CONFIG], [f"IterativeMagnitudePruning.levels = {levels}"])
    result = train.imp_experiment(output_dir=folder, verbose=0)
    rows = result["rows"]
    last = [r for r in rows if r["level"] == levels - 1]
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "trainings": len(rows),
            "remaining": last[0]["remaining"],
            "accuracies": {r["kind"]: r["test_accuracy"] for r in last}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    seconds = {"hand": [], "ours": []}
    cpu = {"hand": [], "ours": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in ("hand", "ours"):
                out = (hand(args.levels) if name == "hand"
                       else ours(args.levels, os.path.join(tmp, f"run{round_}")))
                seconds[name].append(out["seconds"])
                cpu[name].append(out["cpu"])
                accuracies = ", ".join(f"{k} {v:.4f}" for k, v in out["accuracies"].items())
                print(f"round {round_} {name}: {out['seconds']:7.1f} s wall, {out['cpu']:7.1f} s "
                      f"CPU for {out['trainings']} "
                      f"trainings; last level {100 * out['remaining']:.2f}% of weights "
                      f"({accuracies})", flush=True)
    hand_s, ours_s = statistics.median(seconds["hand"]), statistics.median(seconds["ours"])
    hand_c, ours_c = statistics.median(cpu["hand"]), statistics.median(cpu["ours"])
    print(f"median wall: hand {hand_s:.1f} s, ours {ours_s:.1f} s, ratio ours/hand "
          f"{ours_s / hand_s:.2f}; median CPU: hand {hand_c:.1f} s, ours {ours_c:.1f} s, ratio "
          f"ours/hand {ours_c / hand_c:.2f}; load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
