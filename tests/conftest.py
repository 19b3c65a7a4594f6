"""Shared test setup: quiet TensorFlow, select tf_keras (import tf_lottery first)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_lottery  # noqa: E402,F401  (must come before anything that imports Keras)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tf_lottery._keras import keras  # noqa: E402


def build_tiny_model(seed: int = 0):
    """Conv2D(4, 3) -> Flatten -> Dense(32) -> Dense(10) on 8x8x1 inputs.

    Prunable kernels: conv (3, 3, 1, 4) = 36, d1 (144, 32) = 4608, d2 (32, 10) = 320
    parameters, 4964 in all. Layer names are fixed: "conv", "d1", "d2".
    """
    keras.utils.set_random_seed(seed)  # python, numpy and tf: tf_keras initialisers use all
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(32, activation="relu", name="d1")(x)
    outputs = keras.layers.Dense(10, name="d2")(x)
    return keras.Model(inputs, outputs, name="tiny")


@pytest.fixture
def tiny_model():
    """A fresh, built tiny functional model (see ``build_tiny_model``)."""
    return build_tiny_model()


@pytest.fixture
def tiny_data():
    """32 random 8x8x1 images with integer labels in [0, 10)."""
    rng = np.random.default_rng(0)
    return (rng.normal(size=(32, 8, 8, 1)).astype("float32"),
            rng.integers(0, 10, size=(32,)).astype("int32"))
