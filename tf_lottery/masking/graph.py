"""Which layers produce a model's outputs, seen through layers without weights to prune.

IMP prunes "the output layer" at its own rate (Frankle & Carbin 2019); in a functional
model that is the prunable layer nearest each output, past any Activation, Softmax,
Dropout, Reshape or nested model in between, not the last layer in ``model.layers``.
Works on tf_keras and Keras 3 models (their symbolic tensors differ only in names:
``history.layer`` / ``history.operation``, ``node.keras_inputs`` / ``node.input_tensors``).
"""
from typing import Callable, List

from tf_lottery._keras import keras, loaded_keras3


def _model_classes():
    classes = [keras.Model]
    keras3 = loaded_keras3()
    if keras3 is not None:
        classes.append(keras3.Model)
    return tuple(classes)


def _is_nested_model(layer) -> bool:
    return isinstance(layer, _model_classes()) and not hasattr(layer, "layer")  # no Wrapper


def _is_graph(model) -> bool:
    """A functional model: tf_keras says so; Keras 3 has no public flag, but only its
    functional models keep ``_nodes_by_depth``."""
    return bool(getattr(model, "_is_graph_network", False) or hasattr(model, "_nodes_by_depth"))


def _producers(tensor, is_prunable: Callable, seen: set) -> List:
    # tf_keras has no public API for the layer (and call) that made a symbolic tensor;
    # ``_keras_history`` is what its own functional-model code reads.
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return []
    layer = history.layer if hasattr(history, "layer") else history.operation
    node_index, tensor_index = history.node_index, history.tensor_index
    if (id(layer), node_index, tensor_index) in seen:
        return []
    seen.add((id(layer), node_index, tensor_index))
    if _is_nested_model(layer) and _is_graph(layer):
        return _producers(layer.outputs[tensor_index], is_prunable, seen)
    if is_prunable(layer):
        return [layer]
    found = []
    node = layer._inbound_nodes[node_index]
    for parent in (node.keras_inputs if hasattr(node, "keras_inputs") else node.input_tensors):
        found += _producers(parent, is_prunable, seen)
    return found


def output_layers(model, is_prunable: Callable) -> List:
    """The layers for which ``is_prunable(layer)`` holds that are nearest to each output.

    Args:
      model: a built tf_keras or Keras 3 model (functional or Sequential; nested models are
        followed).
      is_prunable: ``layer -> bool``, e.g. "has a weight tf-lottery masks".

    Returns:
      the layers, without repeats, in the order of ``model.outputs``. A model without a
      layer graph (subclassed) gives its last prunable layer in ``model.layers`` order.
    """
    found: List = []
    if _is_graph(model) and model.outputs:
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
