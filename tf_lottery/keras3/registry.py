"""Which weights of a Keras 3 layer are prunable: the built-in coverage and the protocol.

Keras 3 counterpart of tfmot's prune registry. A layer is prunable if it implements
``get_prunable_weights()`` (the ``PrunableLayer`` protocol) or its class is exactly one
of the built-in classes below (subclasses are not assumed to behave like their base,
as in tfmot):

- Dense, EinsumDense, Conv1D/2D/3D, Conv1D/2D/3DTranspose: ``kernel``;
- SeparableConv1D/2D: ``pointwise_kernel`` (the depthwise kernel stays dense);
- Embedding: ``embeddings``;
- MultiHeadAttention: the kernels of its query, key, value and output projections;
- SimpleRNN, GRU, LSTM: the cell's ``kernel`` and ``recurrent_kernel``.

BatchNormalization and LayerNormalization have trainable weights but nothing to prune
(as in tfmot's registry): they stay dense without being listed in ``dense_layers``.
"""
import abc
from typing import List, Optional, Tuple

import keras

_L = keras.layers
_BY_NAME = {
    _L.Dense: ("kernel",), _L.EinsumDense: ("kernel",),
    _L.Conv1D: ("kernel",), _L.Conv2D: ("kernel",), _L.Conv3D: ("kernel",),
    _L.Conv1DTranspose: ("kernel",), _L.Conv2DTranspose: ("kernel",),
    _L.Conv3DTranspose: ("kernel",),
    _L.SeparableConv1D: ("pointwise_kernel",), _L.SeparableConv2D: ("pointwise_kernel",),
    _L.Embedding: ("embeddings",),
}
_MHA_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_output_dense")
_RNNS = (_L.SimpleRNN, _L.GRU, _L.LSTM)
_NOTHING_TO_PRUNE = (_L.BatchNormalization, _L.LayerNormalization)


class PrunableLayer(abc.ABC):
    """Mixin for a custom Keras 3 layer that tf-lottery may prune.

    ``get_prunable_weights()`` returns the ``keras.Variable``s to mask; each must be
    stored as an attribute of the layer or of one of its sublayers (``self.kernel =
    self.add_weight(...)``) and read from that attribute in ``call``, because the
    masked wrapper computes with ``weight * mask`` by swapping that attribute. Any layer
    with a ``get_prunable_weights`` method is accepted; the mixin only documents it.
    """

    @abc.abstractmethod
    def get_prunable_weights(self) -> List[keras.Variable]:
        """The weights to mask, e.g. ``[self.kernel]``."""


def is_prunable(layer) -> bool:
    """Whether ``layer`` implements the protocol or is of a covered class."""
    return (callable(getattr(layer, "get_prunable_weights", None))
            or type(layer) in _BY_NAME or type(layer) in _RNNS
            or type(layer) is _L.MultiHeadAttention)


def _own_variables(layer):
    return [v for v in vars(layer).values() if isinstance(v, keras.Variable)]


def prunable_weights(layer) -> Optional[List[keras.Variable]]:
    """The prunable variables of a built ``layer``, or None if it is not prunable."""
    if callable(getattr(layer, "get_prunable_weights", None)):
        return list(layer.get_prunable_weights())
    kind = type(layer)
    if kind in _BY_NAME:
        names = _BY_NAME[kind]
        return [v for v in _own_variables(layer) if v.name in names]
    if kind is _L.MultiHeadAttention:
        out = []
        for attr in _MHA_PROJECTIONS:  # Keras 3 keeps the projections in these attributes
            out += [v for v in _own_variables(getattr(layer, attr)) if v.name == "kernel"]
        return out
    if kind in _RNNS:
        return [v for v in _own_variables(layer.cell) if v.name in ("kernel", "recurrent_kernel")]
    if kind in _NOTHING_TO_PRUNE:
        return []
    return None


def find_owner(layer, weight) -> Tuple[object, str]:
    """The (object, attribute) holding ``weight`` in ``layer`` or a sublayer (depth <= 3)."""
    stack = [(layer, 0)]
    while stack:
        owner, depth = stack.pop(0)
        # on the PyTorch backend layers are torch Modules, which keep sublayers in _modules
        for attr, value in list(vars(owner).items()) + list(
                (getattr(owner, "_modules", None) or {}).items()):
            if value is weight:
                return owner, attr
            if isinstance(value, keras.layers.Layer) and depth < 3:
                stack.append((value, depth + 1))
    raise ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}) returns a prunable weight "
        f"{weight.path!r} that is not stored as an attribute of the layer or of one of its "
        "sublayers; the masked wrapper masks a weight by swapping that attribute in the "
        "forward pass. Store each prunable weight as an attribute (self.kernel = "
        "self.add_weight(...)).")


def weight_name(layer, owner, weight) -> str:
    """``weight``'s name inside ``layer``: "kernel", or "query_kernel" / "lstm_cell_kernel"
    for a sublayer's weight (the same names as the tf_keras path)."""
    if owner is layer:
        return weight.name
    return f"{owner.name}_{weight.name}"
