"""The prunable weights of a model, one ``Unit`` each, keyed ``"<layer name>/<weight name>"``.

Walks nested models; a layer object shared by two nested models counts once, and two
different weights with one key (nested models reusing a layer name) are refused.
"""
from typing import Iterator, List, Optional

import numpy as np

from tf_lottery._keras import keras, tfmot
from tf_lottery.masking.wrapper import MaskedLayer, _short_name
from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
    PruneRegistry as _PruneRegistry)

__all__ = ["Unit", "check_model", "prunable_weights", "require_units", "units", "walk",
           "walk_paths"]


def walk_paths(model, prefix: str = "") -> Iterator:
    """``(path, layer)`` of every non-model layer, path = nested model names + layer name."""
    prefix = f"{prefix}{model.name}/"
    for layer in model.layers:
        if isinstance(layer, keras.Model) and not isinstance(layer, MaskedLayer):
            yield from walk_paths(layer, prefix)
        else:
            inner = layer.layer if isinstance(layer, MaskedLayer) else layer
            yield prefix + inner.name, layer


def walk(model) -> Iterator:
    for _, layer in walk_paths(model):
        yield layer


def prunable_weights(layer):
    """The weights tfmot would prune in ``layer``; None if tfmot cannot prune it."""
    if type(layer) is keras.layers.DepthwiseConv2D:
        # tfmot registers it with no prunable weight: its kernel would stay dense unnoticed
        return None
    if isinstance(layer, MaskedLayer):
        return [w for w, _ in layer.masked_weights]
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer) or hasattr(
            layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    if _PruneRegistry.supports(layer):
        return list(_PruneRegistry.make_prunable(layer).get_prunable_weights())
    return None


class Unit:
    """One prunable weight: its key, layer, variable and (if wrapped) mask."""

    def __init__(self, layer, inner, weight, mask=None):
        self.layer, self.inner, self.weight, self.mask = layer, inner, weight, mask
        self.key = f"{inner.name}/{_short_name(weight, inner).replace('/', '_')}"
        self.shape = tuple(int(d) for d in weight.shape)
        self.size = int(np.prod(self.shape))


def check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a tf_keras Model, got {type(model).__name__}; build models "
                        "with tf_keras (import tf_lottery first), not Keras 3")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give its first layer an input "
                         "shape or call it once on data before sparsifying")


def units(model, unsupported: Optional[List] = None) -> List[Unit]:
    """Every prunable weight of ``model`` once, in model order; keys must be unique."""
    check_model(model)
    result, seen, where = [], set(), {}
    for path, layer in walk_paths(model):
        if id(layer) in seen:
            continue  # one layer object shared by two nested models: its weights once
        seen.add(id(layer))
        weights = prunable_weights(layer)
        if weights is None:
            if unsupported is not None and layer.trainable_weights:
                unsupported.append(layer)
            continue
        if isinstance(layer, MaskedLayer):
            found = [Unit(layer, layer.layer, w, m) for w, m in layer.masked_weights]
        else:
            found = [Unit(layer, layer, w) for w in weights]
        for u in found:
            if u.key in where:
                raise ValueError(
                    f"weight key {u.key!r} names two weights, of {where[u.key]!r} and "
                    f"{path!r}: tf-lottery keys weights by layer name, so layer names must be "
                    "unique across nested models; rename one (e.g. "
                    f"name={u.inner.name + '_2'!r})")
            where[u.key] = path
        result += found
    return result


def require_units(model, units):
    if not units:
        raise ValueError(f"model {model.name!r} has no layer that tfmot can prune (Dense, Conv, "
                         "Embedding, ... or a layer implementing "
                         "tfmot.sparsity.keras.PrunableLayer)")
