"""MaskedLayer for Keras 3: one 0/1 mask variable per prunable weight of a wrapped layer.

Backend-neutral (keras.ops only). Invariant ("masks are law"): every masked entry is
exactly 0 wherever a user looks.

- A training-mode forward pass computes with the raw weights, whose masked entries are
  0, and masks their gradient (``keras.ops.custom_gradient``): one elementwise pass per
  masked weight and step, and no optimizer moves a masked entry. Reading
  ``variable.value`` honours Keras' ``StatelessScope``, so this works inside JAX's
  stateless training step too.
- An inference-mode forward pass computes with ``weight * mask`` (while the wrapped
  layer's ``call`` runs, the attribute that holds each prunable variable,
  ``Dense._kernel``, ``LSTMCell.recurrent_kernel``, ..., is swapped for the tensor), so
  predictions are right even after an outside increment.
- A write from outside (``load_weights``, ``kernel.assign``, ``set_weights``, a kernel
  constraint, EMA finalisation, JAX's end-of-epoch state sync) is masked as it lands
  (``tf_lottery.masking.guard``), whichever of a weight and its mask is written first.
- Every mask change goes through ``state.assign_mask``, which also resets the optimizer
  state of the entries turned off or on (EMA copies included).
"""
import inspect
import weakref
from typing import List, Tuple

import keras
import numpy as np
from keras import ops

from tf_lottery.keras3 import registry, state
from tf_lottery.masking import guard, plan


_JAX = keras.config.backend() == "jax"
_TORCH = keras.config.backend() == "torch"
#: The masks' variable dtype: bool on JAX (XLA fuses the conversion into the step, which
#: then reads a quarter of the bytes), float32 on TensorFlow and PyTorch (where a
#: conversion would be one more elementwise pass). Files always hold float32 0/1.
MASK_DTYPE = "bool" if _JAX else "float32"


def _torch_gradient_hook(layer_ref, index):
    """PyTorch: a hook on a weight's tensor that masks its gradient (an autograd function
    per weight and step costs more, in Python, than the masking)."""
    def hook(grad):
        layer = layer_ref()
        if layer is None or layer._dense_gradients:
            return grad
        return grad * layer._pairs[index][1].value.to(grad.dtype)
    return hook


def _masked(value, mask):
    return value * mask


@ops.custom_gradient
def _gradient_masked(value, mask):
    """``value`` itself (its masked entries are 0) with the gradient ``upstream * mask``."""
    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        # the mask has no gradient: None (no work) where the backend takes it; JAX's
        # custom gradients need an array (unused, so XLA drops it)
        return upstream * mask, (ops.zeros_like(mask) if _JAX else None)
    return value, grad


def mask_array(mask) -> np.ndarray:
    """A mask variable's value as a float32 0/1 numpy array (any backend's dtype)."""
    return np.asarray(ops.convert_to_numpy(mask.value), np.float32)


class _KerasArrays(guard.ArrayIO):
    """The write guard's array operations on Keras 3 variables (every backend)."""

    increments_assign = True

    def read(self, variable):
        return variable.value

    def masked(self, value, mask):
        return value * ops.cast(mask.value, value.dtype)

    def concrete(self, value) -> bool:
        backend = keras.config.backend()
        if backend == "tensorflow":
            import tensorflow as tf
            return tf.executing_eagerly()
        if backend == "jax":
            import jax
            return not isinstance(value, jax.core.Tracer)
        return True

    def equal(self, a, b) -> bool:
        if any(getattr(x, "is_deleted", lambda: False)() for x in (a, b)):
            return False  # a JAX buffer donated to a training step since
        return bool(ops.all(ops.equal(a, b)))

    def copy(self, value):
        return ops.copy(value)

    def ready(self, weight, mask) -> bool:
        """On JAX: not inside a traced step (there the writes are an optimizer's own, e.g.
        weight decay, which move no masked entry), and both variables hold live buffers:
        JAX's training functions donate the buffers and the trainer assigns new ones back
        one variable at a time. Keras has no public API for either (``_value``,
        ``in_stateless_scope``)."""
        if keras.config.backend() != "jax":
            return True
        from keras.src.backend.common.stateless_scope import in_stateless_scope
        if in_stateless_scope():
            return False
        buffers = (weight._value, mask._value)
        return all(b is not None and not b.is_deleted() for b in buffers)

    def can_write(self) -> bool:
        if keras.config.backend() != "tensorflow":
            return True
        import tensorflow as tf
        context = tf.distribute.get_replica_context()
        return context is None or context.num_replicas_in_sync <= 1


_KERAS_IO = _KerasArrays()


@keras.saving.register_keras_serializable(package="tf_lottery")
class MaskedLayer(keras.layers.Wrapper):
    """Wraps a prunable Keras 3 layer with one 0/1 mask per prunable weight.

    Args:
      layer: a layer of the covered classes (see ``tf_lottery.keras3.registry``) or one
        with ``get_prunable_weights()`` (``tf_lottery.keras3.PrunableLayer``).
      **kwargs: passed to ``keras.layers.Wrapper`` (``name``, ...).

    Masks start as all ones (non-trainable, ``MASK_DTYPE``; saved as float32 0/1); set
    them with ``set_masks`` or ``tfl.sparsify``. ``masked_weights`` lists ``(weight,
    mask)`` pairs.
    """

    def __init__(self, layer, **kwargs):
        if isinstance(layer, MaskedLayer):
            raise ValueError(f"layer {layer.name!r} is already a MaskedLayer; wrap a layer once")
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(f"MaskedLayer wraps a Keras 3 layer, got {type(layer).__name__}")
        if not registry.is_prunable(layer):
            raise ValueError(
                f"layer {layer.name!r} ({type(layer).__name__}) is not prunable: tf-lottery "
                "masks Dense, EinsumDense, Conv1D/2D/3D(Transpose), SeparableConv1D/2D, "
                "Embedding, MultiHeadAttention, SimpleRNN, GRU and LSTM, or a layer with "
                "get_prunable_weights() (tf_lottery.keras3.PrunableLayer)")
        kwargs.setdefault("name", "masked_" + layer.name)
        super().__init__(layer, **kwargs)
        object.__setattr__(self, "_pairs", [])  # untracked: the weights belong to the layer
        object.__setattr__(self, "_owners", [])
        object.__setattr__(self, "_names", [])
        self._takes_training = "training" in inspect.signature(layer.call).parameters
        self._dense_gradients = False

    def __call__(self, *args, **kwargs):
        if not self.layer.built:
            # build the inner layer from the real arguments (MultiHeadAttention needs the
            # query and value shapes, which a one-shape build cannot give)
            self.layer(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def build(self, input_shape=None):
        if not self.layer.built:
            self.layer.build(input_shape)
        pairs, owners, names = [], [], []
        for weight in registry.prunable_weights(self.layer):
            owner, attr = registry.find_owner(self.layer, weight)
            name = registry.weight_name(self.layer, owner, weight)
            while name in names:
                name = "_" + name
            mask = self.add_weight(name=name + "_mask", shape=tuple(weight.shape),
                                   dtype=MASK_DTYPE, initializer="ones", trainable=False,
                                   aggregation="only_first_replica")
            pairs.append((weight, mask))
            owners.append((owner, attr))
            names.append(name)
        object.__setattr__(self, "_pairs", pairs)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_names", names)
        object.__setattr__(self, "_guard", guard.WriteGuard(pairs, _KERAS_IO))
        self.built = True

    def get_build_config(self):
        return {"layer": self.layer.get_build_config()}

    def build_from_config(self, config):
        if "layer" in config:
            if config["layer"] is not None and not self.layer.built:
                self.layer.build_from_config(config["layer"])
            self.build()
        else:
            super().build_from_config(config)

    @property
    def masked_weights(self) -> List[Tuple[keras.Variable, keras.Variable]]:
        """``(weight, mask)`` pairs in ``get_prunable_weights`` order."""
        return list(self._pairs)

    @property
    def weight_names(self) -> List[str]:
        """Names of the masked weights inside the layer ("kernel", "query_kernel", ...)."""
        return list(self._names)

    def set_dense_gradients(self, on: bool, masks=None) -> None:
        """Hands the masking of this layer's weights to a sparse-training optimizer.

        While ``on``, the forward pass computes with the raw weights and the backward pass
        gives the dense gradient dL/d(w * m) (RigL's grow criterion) at no extra cost; that
        optimizer (``tf_lottery.keras3.SparseOptimizer``) masks the gradients and zeroes
        dropped weights with their state, so masked entries stay exactly 0. Set it before
        the training step is traced; ``on=False`` restores the layer's own gradient mask.
        ``masks``: the optimizer's copies of the masks (JAX; one variable per
        ``masked_weights`` pair), by which outside writes are masked while ``on``.
        """
        self._dense_gradients = bool(on)
        self._guard.follow(masks if on else None)

    def call(self, *args, training=None, **kwargs):
        if self._takes_training:
            kwargs["training"] = training
        if self._dense_gradients or (training and _TORCH and self._hook_gradients()):
            return self.layer.call(*args, **kwargs)
        forward = _gradient_masked if training else _masked
        originals = []
        try:
            for (owner, attr), (weight, mask) in zip(self._owners, self._pairs):
                value = weight.value
                masked = forward(value, ops.cast(mask.value, value.dtype))
                originals.append((owner, attr, getattr(owner, attr)))
                object.__setattr__(owner, attr, masked)
            return self.layer.call(*args, **kwargs)
        finally:
            for owner, attr, original in originals:
                object.__setattr__(owner, attr, original)

    def _hook_gradients(self) -> bool:
        """PyTorch: masks the weights' gradients with tensor hooks (registered once per
        tensor; the forward pass then reads the raw weights, exactly 0 where masked)."""
        hooked = self.__dict__.setdefault("_hooked", {})
        for index, (weight, _) in enumerate(self._pairs):
            tensor = weight.value
            if hooked.get(index) is not tensor and getattr(tensor, "requires_grad", False):
                tensor.register_hook(_torch_gradient_hook(weakref.ref(self), index))
                hooked[index] = tensor
        return True

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_masks(self) -> List[np.ndarray]:
        """The masks as float32 numpy arrays, in ``masked_weights`` order."""
        return [mask_array(m) for _, m in self._pairs]

    def save_own_variables(self, store):
        """Saves the masks as float32 0/1 arrays (the same file on every backend)."""
        for i, mask in enumerate(self.get_masks()):
            store[f"{i}"] = mask

    def load_own_variables(self, store):
        """Loads masks saved by any backend (float32 0/1, or this backend's dtype)."""
        if len(store.keys()) != len(self._pairs):
            return super().load_own_variables(store)  # (Keras' own error message)
        for i, (_, mask) in enumerate(self._pairs):
            mask.assign(ops.cast(np.asarray(store[f"{i}"]), mask.dtype))

    def check_masks(self, masks) -> List[np.ndarray]:
        """The masks as float32 arrays; raises ValueError (before any change) if one is bad."""
        return plan.check_masks(self.name, [(w.path, m.shape) for w, m in self._pairs], masks)

    def set_masks(self, masks, optimizers=()) -> None:
        """Sets every mask (0/1 arrays shaped like the weights) and keeps the invariant.

        Entries turned off become 0, and so does their state in each built optimizer of
        ``optimizers`` that tracks the weight (slots get their initial value, EMA copies 0);
        entries turned on start at 0 with fresh state. ``tfl.set_masks`` passes the
        model's compiled optimizer; pass a custom loop's optimizer here (one, a list, or a
        ``state.SlotTable`` of them).
        """
        values = self.check_masks(masks)
        if not isinstance(optimizers, state.SlotTable):
            optimizers = state.SlotTable(state.live_optimizers(None, optimizers))
        for (weight, mask), value in zip(self._pairs, values):
            slots, fills = optimizers.of(weight)
            state.assign_mask(weight, mask, value, slots, fills)

    def apply_masks(self) -> None:
        """Writes ``weight * mask`` into every masked weight (restores the invariant)."""
        self._guard.write_masked()

    def release(self):
        """The wrapped layer (``strip`` builds the plain model from these)."""
        return self.layer

    def get_config(self):
        return super().get_config()

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                      custom_objects=custom_objects)
        return cls(layer, **config)
