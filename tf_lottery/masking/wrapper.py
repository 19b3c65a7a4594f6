"""MaskedLayer: a tfmot pruning wrapper whose masks are set from outside.

``MaskedLayer`` subclasses tfmot's ``PruneLowMagnitude``, so it accepts exactly the
layers tfmot can prune (its prune registry, ``PrunableLayer``, or any layer with a
``get_prunable_weights`` method) and ``tfmot.sparsity.keras.strip_pruning`` removes
it. Unlike tfmot's wrapper it has no schedule, threshold or step counter: it holds
one 0/1 mask variable per prunable weight, and the masks change only when
tf-lottery sets them (sparsify, IMP pruning, RigL updates).

Invariant: every masked entry of a weight variable is exactly 0. Setting masks
(and ``set_weights``, rewinding, RigL updates, ``strip``) writes ``weight * mask``
once; in between, the forward pass reads the weight through an identity whose
gradient is ``upstream * mask``, so the loss gradient of a masked entry is exactly 0
and a gradient-based optimizer (SGD with momentum, Adam, L2 regularisers, decoupled
weight decay, loss scaling) leaves the zero where it is without any per-step write.
Masking the gradient rather than the forward weight saves one elementwise pass per
kernel and step (measured in ``benchmarks/step_overhead.py``). Weights written behind
the wrapper's back (``model.load_weights`` of a dense checkpoint, ``kernel.assign``)
are re-zeroed by ``tfl.apply_masks(model)``.
"""
import contextlib
import inspect
from typing import List, Tuple

import numpy as np

from tf_lottery._keras import keras, tf
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude as _PruneLowMagnitude)


@tf.custom_gradient
def _masked_gradient(value, mask):
    """The weight as it is (masked entries are already 0), with gradient ``upstream * mask``."""
    def grad(upstream):
        return upstream * mask, None
    return tf.identity(value), grad


class _State:
    unmasked = False  # process-wide: MirroredStrategy traces replicas in other threads


@contextlib.contextmanager
def unmasked_forward():
    """Inside this context (at trace time) MaskedLayers use their weights without the mask.

    The output is unchanged (masked entries are 0), but the gradient of the loss with
    respect to each weight variable becomes the dense gradient dL/d(weight * mask),
    which RigL's grow criterion needs. Only a function traced inside the context is
    affected.
    """
    previous = _State.unmasked
    _State.unmasked = True
    try:
        yield
    finally:
        _State.unmasked = previous


def _short_name(weight, layer) -> str:
    """``weight``'s name inside ``layer``: "kernel", "query/kernel", "lstm_cell/kernel".

    Drops the name scope up to the layer's own name, or up to its MaskedLayer's name: a
    layer built by its wrapper (from_config, h5 loading) gets "masked_layer_<name>/kernel".
    """
    parts = weight.name.split(":")[0].split("/")
    scopes = (layer.name, "masked_layer_" + layer.name)
    for i, part in enumerate(parts[:-1]):
        if part in scopes:
            return "/".join(parts[i + 1:])
    return "/".join(parts)


def _find_owner(layer, weight) -> Tuple[object, str]:
    """The (object, attribute) that holds ``weight`` inside ``layer`` or its sublayers."""
    for owner in [layer] + list(layer._flatten_layers(include_self=False)):
        for attr, value in vars(owner).items():
            if value is weight:
                return owner, attr
    raise ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}) returns a prunable weight "
        f"{weight.name!r} that is not stored as an attribute of the layer or of one of its "
        "sublayers; MaskedLayer masks a weight by replacing that attribute in the forward "
        "pass. Store each prunable weight as an attribute (e.g. self.kernel = "
        "self.add_weight(...)).")


def _build_lazy_sublayers(layer) -> None:
    """Creates weights that ``layer`` would create only on its first call.

    A MultiHeadAttention restored by ``from_config`` (``Model.from_config``, h5 and
    SavedModel loading) has its projection sublayers but not their kernels, which the
    masks need at build time; its config remembers the input shapes, so build them here.
    """
    if not (isinstance(layer, keras.layers.MultiHeadAttention)
            and getattr(layer, "_built_from_signature", False)):
        return
    heads = tf.TensorShape([layer._num_heads, layer._value_dim])
    shapes = [(layer._query_dense, layer._query_shape), (layer._key_dense, layer._key_shape),
              (layer._value_dense, layer._value_shape),
              (layer._output_dense, layer._query_shape[:-1].concatenate(heads))]
    for sublayer, shape in shapes:
        if not sublayer.built:
            with tf.name_scope(sublayer.name):
                sublayer.build(shape)


@keras.utils.register_keras_serializable(package="tf_lottery")
class MaskedLayer(_PruneLowMagnitude):
    """Wraps a prunable tf_keras layer with one 0/1 mask per prunable weight.

    Args:
      layer: a layer tfmot can prune (Dense, Conv1D/2D/3D and their transposes,
        SeparableConv1D/2D (pointwise kernel), Embedding, LocallyConnected,
        MultiHeadAttention, SimpleRNN/GRU/LSTM, or a ``PrunableLayer``).
      **kwargs: passed to ``keras.layers.Wrapper``.

    The masks start as all ones; set them with ``set_masks`` (or ``tfl.sparsify``).
    Mask variables are float32 (float16 compute under mixed precision reads them cast),
    non-trainable, and aggregate ONLY_FIRST_REPLICA under tf.distribute so that replicas
    always hold the same mask.
    """

    def __init__(self, layer, **kwargs):
        kwargs.pop("pruning_schedule", None)
        if isinstance(layer, MaskedLayer):
            raise ValueError(f"layer {layer.name!r} is already a MaskedLayer; wrap a layer once")
        super().__init__(layer, **kwargs)
        self.masked_weights: List[Tuple[tf.Variable, tf.Variable]] = []
        self._owners: List[Tuple[object, str]] = []
        self._call_takes_training = None

    def build(self, input_shape):
        keras.layers.Wrapper.build(self, input_shape)
        _build_lazy_sublayers(self.layer)
        pairs, owners, used = [], [], set()
        for weight in self.layer.get_prunable_weights():
            name = _short_name(weight, self.layer).replace("/", "_") + "_mask"
            while name in used:
                name = "_" + name
            used.add(name)
            dtype = getattr(weight, "true_dtype", weight.dtype)
            mask = self.add_weight(
                name, shape=weight.shape, dtype=dtype, trainable=False,
                initializer=keras.initializers.Ones(),
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            pairs.append((weight, mask))
            owners.append(_find_owner(self.layer, weight))
        self.masked_weights = pairs
        self._owners = owners
        self.pruning_vars = []

    def call(self, inputs, training=None, **kwargs):
        if self._call_takes_training is None:
            self._call_takes_training = "training" in inspect.signature(self.layer.call).parameters
        if self._call_takes_training:
            kwargs["training"] = training
        if _State.unmasked:
            return self.layer.call(inputs, **kwargs)
        originals = []
        try:
            for (owner, attr), (weight, mask) in zip(self._owners, self.masked_weights):
                value = tf.convert_to_tensor(weight)
                originals.append((owner, attr, getattr(owner, attr)))
                object.__setattr__(owner, attr, _masked_gradient(value, tf.cast(mask, value.dtype)))
            return self.layer.call(inputs, **kwargs)
        finally:
            for owner, attr, original in originals:
                object.__setattr__(owner, attr, original)

    @property
    def weight_names(self) -> List[str]:
        """Short names of the masked weights ("kernel", "query_kernel", ...), in order."""
        return [_short_name(w, self.layer).replace("/", "_") for w, _ in self.masked_weights]

    def get_masks(self) -> List[np.ndarray]:
        """The masks as numpy arrays, in ``masked_weights`` order."""
        return [np.asarray(m.numpy()) for _, m in self.masked_weights]

    def set_masks(self, masks) -> None:
        """Sets every mask (0/1 arrays shaped like the weights) and zeroes the masked weights."""
        values = self._check_masks(masks)
        for (_, mask), value in zip(self.masked_weights, values):
            mask.assign(value)
        self.apply_masks()

    def _check_masks(self, masks) -> List[np.ndarray]:
        """The masks as float32 arrays; raises ValueError (before any change) if one is bad."""
        masks = list(masks)
        if len(masks) != len(self.masked_weights):
            raise ValueError(f"{self.name}: expected {len(self.masked_weights)} masks, "
                             f"got {len(masks)}")
        values = []
        for (weight, mask), value in zip(self.masked_weights, masks):
            value = np.asarray(value, dtype=np.float32)
            if tuple(value.shape) != tuple(mask.shape):
                raise ValueError(f"{self.name}: mask for {weight.name} has shape {value.shape}, "
                                 f"expected {tuple(mask.shape)}")
            if not np.all((value == 0) | (value == 1)):
                raise ValueError(f"{self.name}: masks must hold only 0s and 1s")
            values.append(value)
        return values

    def apply_masks(self) -> None:
        """Writes ``weight * mask`` into every masked weight (restores the invariant)."""
        for weight, mask in self.masked_weights:
            weight.assign(weight * tf.cast(mask, weight.dtype))

    def set_weights(self, weights):
        """Sets the wrapped layer's weights, then zeroes the masked entries."""
        super().set_weights(weights)
        self.apply_masks()

    def get_config(self):
        return keras.layers.Wrapper.get_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.layers.deserialize(config.pop("layer"), custom_objects=custom_objects)
        return cls(layer, **config)
