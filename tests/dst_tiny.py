"""The tiny tf_keras model and data of the DST callback tests (test_dst_callback.py,
test_dst_fit_calls.py); not a test file."""
import numpy as np

import tf_lottery as tfl
from tf_lottery._keras import keras

BATCH = 8


def _tiny(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16, activation="tanh", name="d1")(x)
    outputs = keras.layers.Dense(5, name="d2")(x)
    return keras.Model(inputs, outputs, name="tiny")


def _data(steps, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(steps * BATCH, 6, 6, 1)).astype("float32"),
            rng.integers(0, 5, size=(steps * BATCH,)).astype("int32"))


def _sparse(optimizer=None, sparsity=0.7, seed=0):
    model = tfl.sparsify(_tiny(seed), sparsity, "erk", seed=seed)
    model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model
