"""Which layers produce a model's outputs, seen through layers without weights to prune.

IMP prunes "the output layer" at its own rate (Frankle & Carbin 2019); in a functional
model that is the prunable layer nearest each output, past any Activation, Softmax,
Dropout, Reshape or nested model in between, not the last layer in ``model.layers``.
"""
from typing import Callable, List

from tf_lottery._keras import keras


def _is_nested_model(layer) -> bool:
    return isinstance(layer, keras.Model) and not isinstance(layer, keras.layers.Wrapper)


def _producers(tensor, is_prunable: Callable, seen: set) -> List:
    # tf_keras has no public API for the layer (and call) that made a symbolic tensor;
    # ``_keras_history`` is what its own functional-model code reads.
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return []
    layer, node_index, tensor_index = history.layer, history.node_index, history.tensor_index
    if (id(layer), node_index, tensor_index) in seen:
        return []
    seen.add((id(layer), node_index, tensor_index))
    if _is_nested_model(layer) and getattr(layer, "_is_graph_network", False):
        return _producers(layer.outputs[tensor_index], is_prunable, seen)
    if is_prunable(layer):
        return [layer]
    found = []
    for parent in layer._inbound_nodes[node_index].keras_inputs:
        found += _producers(parent, is_prunable, seen)
    return found


def output_layers(model, is_prunable: Callable) -> List:
    """The layers for which ``is_prunable(layer)`` holds that are nearest to each output.

    Args:
      model: a built tf_keras model (functional or Sequential; nested models are followed).
      is_prunable: ``layer -> bool``, e.g. "has a weight tf-lottery masks".

    Returns:
      the layers, without repeats, in the order of ``model.outputs``. A model without a
      layer graph (subclassed) gives its last prunable layer in ``model.layers`` order.
    """
    found: List = []
    if getattr(model, "_is_graph_network", False) and model.outputs:
        seen: set = set()
        for tensor in model.outputs:
            found += _producers(tensor, is_prunable, seen)
    else:
        for layer in reversed(model.layers):
            if _is_nested_model(layer) and not is_prunable(layer):
                inner = output_layers(layer, is_prunable)
                if inner:
                    return inner
            elif is_prunable(layer):
                return [layer]
    unique: List = []
    for layer in found:
        if not any(layer is u for u in unique):
            unique.append(layer)
    return unique
