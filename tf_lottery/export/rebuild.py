"""Rebuilding a plain Keras model with some layers changed, the others' weights copied."""
from typing import Callable, Collection, Mapping, Sequence

import numpy as np

from tf_lottery._keras import keras


def rebuild(model, clone_function: Callable, weights: Mapping[str, Sequence[np.ndarray]] = None,
            built: Collection[str] = ()):
    """A clone of the functional/Sequential ``model`` made by ``clone_function(layer)``.

    A layer named in ``weights`` gets those weights; one named in ``built`` keeps the
    weights ``clone_function`` gave it; every other layer copies the weights of the
    layer of the same name in ``model``.
    """
    weights = weights or {}
    rebuilt = keras.models.clone_model(model, clone_function=clone_function)
    for layer in rebuilt.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.name not in built and layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rebuilt
