"""MaskedLayer: a tfmot pruning wrapper whose masks are set from outside.

``MaskedLayer`` subclasses tfmot's ``PruneLowMagnitude``, so it accepts exactly the
layers tfmot can prune (its prune registry, ``PrunableLayer``, or any layer with a
``get_prunable_weights`` method) and ``tfmot.sparsity.keras.strip_pruning`` removes
it. Unlike tfmot's wrapper it has no schedule, threshold or step counter: it holds
one 0/1 mask variable per prunable weight, and the masks change only when
tf-lottery sets them (sparsify, IMP pruning, RigL updates).

Invariant ("masks are law"): every masked entry is exactly 0 wherever a user looks.

- A training-mode forward pass computes with the raw weight variables, whose masked
  entries are 0, and masks their gradient: the loss gradient of a masked entry is exactly
  0 (one elementwise pass per masked weight and step).
- Every mask change goes through ``tf_lottery.masking.state`` / ``update.assign_mask``,
  which also reset the optimizer state (momentum, moments, accumulators, EMA copies) of
  the entries turned off or on. With zero gradient and zero state, no optimizer (SGD,
  Adam, AdamW, Adagrad, RMSprop, Ftrl, Lion, L2 regularisers, EMA, loss scaling) moves a
  masked entry away from 0.
- A write from outside tf-lottery (``load_weights``, ``Checkpoint.restore``,
  ``kernel.assign``, ``set_weights``, a kernel constraint, EMA finalisation) is masked as
  it lands (``tf_lottery.masking.guard``), whichever of a weight and its mask is written
  first. An inference-mode forward pass computes with ``weight * mask``, so predictions
  are right even after an increment from outside (``assign_add``), which is not hooked.
- Inside a replica of a multi-replica ``tf.distribute`` strategy, where a layer's call
  cannot write a mirrored variable, the training forward pass computes with
  ``weight * mask`` (its gradient is masked by the product) and the next tf-lottery call
  or mask update re-zeroes the variables.

Dense gradients for RigL: inside ``unmasked_forward()`` (trace time), or at run time
while a gate set with ``set_gradient_gate`` is True, the backward pass gives the dense
gradient dL/d(weight * mask) for the masked weights instead of ``upstream * mask``. The
caller must then mask the gradient itself before an optimizer sees it.
"""
import contextlib
import inspect
from typing import List, Tuple

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.masking import guard, plan, state, update
from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import (
    PruneLowMagnitude as _PruneLowMagnitude)


def _masked(value, mask, gate=None, dense: bool = False):
    """``value * mask`` whose gradient is ``upstream * mask``, or the dense ``upstream``
    when ``dense`` (trace time) or the scalar bool tensor ``gate`` (run time) is True."""
    if not dense and gate is None:
        return value * mask

    @tf.custom_gradient
    def masked(v):
        def grad(upstream):
            if dense:
                return upstream
            return tf.cond(gate, lambda: upstream, lambda: upstream * mask)
        return v * mask, grad
    return masked(value)


def _gradient_masked(value, mask, gate=None, dense: bool = False):
    """``value`` itself (its masked entries are 0), with the gradient of ``_masked``."""
    if dense:
        return value

    @tf.custom_gradient
    def read(v):
        def grad(upstream):
            if gate is None:
                return upstream * mask
            return tf.cond(gate, lambda: upstream, lambda: upstream * mask)
        return tf.identity(v), grad
    return read(value)


class _TFArrays(guard.ArrayIO):
    """The write guard's array operations on tf_keras variables."""

    def target(self, variable):
        """tf_keras' ``AutoCastVariable`` (mixed precision) reads as float16 inside a
        layer's call and has no public accessor for the float32 variable it wraps, whose
        methods its own delegate to: that ``_variable`` is hooked and written."""
        return getattr(variable, "_variable", variable)

    def read(self, variable):
        return tf.convert_to_tensor(self.target(variable))

    def masked(self, value, mask):
        return value * tf.cast(mask, value.dtype)

    def concrete(self, value) -> bool:
        return tf.executing_eagerly()

    def equal(self, a, b) -> bool:
        return bool(tf.reduce_all(tf.equal(a, b)))

    def copy(self, value):
        return tf.identity(value)

    def can_write(self) -> bool:
        context = tf.distribute.get_replica_context()
        return context is None or context.num_replicas_in_sync <= 1


_TF_IO = _TFArrays()


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
        self._gradient_gate = None
        self._guard = None

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
        object.__setattr__(self, "_guard", guard.WriteGuard(pairs, _TF_IO))

    def call(self, inputs, training=None, **kwargs):
        if self._call_takes_training is None:
            self._call_takes_training = "training" in inspect.signature(self.layer.call).parameters
        if self._call_takes_training:
            kwargs["training"] = training
        train = training is True or (training is None and keras.backend.learning_phase() == 1)
        read_raw = train and _TF_IO.can_write()
        originals = []
        try:
            for (owner, attr), (weight, mask) in zip(self._owners, self.masked_weights):
                value = tf.convert_to_tensor(weight)
                forward = _gradient_masked if read_raw else _masked
                masked = forward(value, tf.cast(mask, value.dtype), self._gradient_gate,
                                 _State.unmasked)
                originals.append((owner, attr, getattr(owner, attr)))
                object.__setattr__(owner, attr, masked)
            return self.layer.call(inputs, **kwargs)
        finally:
            for owner, attr, original in originals:
                object.__setattr__(owner, attr, original)

    def set_gradient_gate(self, gate) -> None:
        """Lets a scalar bool variable switch on dense gradients at run time.

        While ``gate`` is True, the backward pass gives the dense gradient
        dL/d(weight * mask) for this layer's masked weights (RigL's grow criterion);
        otherwise ``upstream * mask``. Set it before the training function is traced;
        ``None`` removes it. Whoever sets a gate must mask the gradients before an
        optimizer applies them. The gate is not a weight of the layer (``get_weights`` and
        h5 files are unchanged); it is a checkpoint dependency, so a SavedModel of the live
        model, whose traced gradient reads it, still saves.
        """
        object.__setattr__(self, "_gradient_gate", gate)  # not a Keras-tracked weight
        if gate is not None:
            # no public API tracks a variable on a Keras layer without making it a weight
            self._track_trackable(gate, name="dst_gradient_gate", overwrite=True)

    @property
    def weight_names(self) -> List[str]:
        """Short names of the masked weights ("kernel", "query_kernel", ...), in order."""
        return [_short_name(w, self.layer).replace("/", "_") for w, _ in self.masked_weights]

    def get_masks(self) -> List[np.ndarray]:
        """The masks as numpy arrays, in ``masked_weights`` order."""
        return [np.asarray(m.numpy()) for _, m in self.masked_weights]

    def set_masks(self, masks, optimizers=()) -> None:
        """Sets every mask (0/1 arrays shaped like the weights) and keeps the invariant.

        Entries turned off become 0, and so does their state in each optimizer of
        ``optimizers`` that tracks the weight (slots get their initial value, EMA copies 0);
        entries turned on start at 0 with fresh state. ``tfl.set_masks`` passes the
        model's compiled optimizer; pass the optimizer of a custom training loop here.
        """
        values = self.check_masks(masks)
        for (weight, mask), value in zip(self.masked_weights, values):
            slots, fills = state.slots_of(optimizers, weight)
            update.assign_mask(weight, mask, value, slots, fills)

    def check_masks(self, masks) -> List[np.ndarray]:
        """The masks as float32 arrays; raises ValueError (before any change) if one is bad."""
        return plan.check_masks(self.name, [(w.name, m.shape) for w, m in self.masked_weights],
                                masks)

    def apply_masks(self) -> None:
        """Writes ``weight * mask`` into every masked weight (restores the invariant)."""
        self._guard.write_masked()

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
