"""Constant fan-in vs unstructured masks at the same sparsity: digits test accuracy.

    python benchmarks/constant_fan_in_digits.py [--sparsity=0.9] [--seeds=3] [--epochs=40]

LeNet-300-100 on scikit-learn's digits (64 inputs; 1,257 train / 540 test images),
ERK masks drawn with ``tfl.sparsify(structure=...)``, trained with SGD + momentum under
static masks and under RigL (``structure="constant_fan_in"`` keeps each unit's number of
inputs through the updates). Prints mean and standard deviation of the final test
accuracy over seeds, and the per-unit fan-in spread of the final masks.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_lottery as tfl  # noqa: E402
from tf_lottery._keras import keras  # noqa: E402
from tf_lottery.masking import selection  # noqa: E402
from tf_lottery.training.datasets import load_digits_arrays  # noqa: E402


def train(method, structure, sparsity, seed, epochs):
    x_train, y_train, x_test, y_test = load_digits_arrays()
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    x = keras.layers.Dense(300, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))
    model = tfl.sparsify(model, sparsity, "erk", seed=seed, structure=structure)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    steps = int(np.ceil(len(x_train) / 32)) * epochs
    callbacks = []
    if method == "rigl":
        callbacks = [tfl.RigL(delta_t=50, alpha=0.3, end_step=int(0.75 * steps), seed=seed,
                              structure=structure)]
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    spreads = [int(np.ptp(selection.fan_in_counts(m))) for m in tfl.get_masks(model).values()]
    return accuracy, max(spreads), 1.0 - tfl.sparsity_report(model)[-1]["sparsity"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    print(f"| method | mask structure | test accuracy (mean ± std, {args.seeds} seeds) "
          "| weights kept | largest fan-in spread |")
    print("|---|---|---|---|---|")
    for method in ("static", "rigl"):
        for structure in ("unstructured", "constant_fan_in"):
            runs = [train(method, structure, args.sparsity, s, args.epochs)
                    for s in range(args.seeds)]
            acc = np.array([r[0] for r in runs])
            print(f"| {method} | {structure} | {acc.mean():.4f} ± {acc.std():.4f} | "
                  f"{runs[0][2]:.2%} | {max(r[1] for r in runs)} |", flush=True)


if __name__ == "__main__":
    main()
