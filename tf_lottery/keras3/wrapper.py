"""MaskedLayer for Keras 3: one 0/1 mask variable per prunable weight of a wrapped layer.

Backend-neutral (keras.ops only). Invariant ("masks are law"): every masked entry is
exactly 0 wherever a user looks.

- The forward pass computes with ``weight * mask``: while the wrapped layer's ``call``
  runs, the attribute that holds each prunable variable (``Dense._kernel``,
  ``LSTMCell.recurrent_kernel``, ...) is swapped for the masked tensor, so predictions
  are right even after an outside write (``load_weights``, ``kernel.assign``) and the
  loss gradient of a masked entry is exactly 0. Reading ``variable.value`` honours
  Keras' ``StatelessScope``, so this works inside JAX's stateless training step too.
- After a training step no masked entry may be left non-zero by an outside write, and
  an optimizer must never see one (an EMA copy would keep it: ``use_ema`` writes the
  averages back at the end of ``fit``). One write per masked weight and step does it:

  - TensorFlow and PyTorch: a training-mode forward pass writes the ``weight * mask`` it
    computed back into the variable, before the optimizer runs (as the tf_keras path does);
  - JAX (and a weight computed in another dtype, mixed precision): each masked variable gets a ``constraint`` that multiplies by the mask
    (composed with the layer's own constraint), which Keras 3 optimizers apply after
    each update (a JAX layer call cannot write a trainable variable). On JAX the
    constraint uses a host copy of the mask baked in when the step is traced:
    ``tfl.set_masks`` drops the model's compiled train function so that the next ``fit``
    retraces it (a custom JAX loop must re-jit after a mask change).

  Doing both would repeat the same multiply every step (``benchmarks/
  keras3_step_overhead.py``).
- Every mask change goes through ``state.assign_mask``, which also resets the optimizer
  state of the entries turned off or on (EMA copies included).
"""
import inspect
from typing import List, Tuple

import keras
import numpy as np
from keras import ops

from tf_lottery.keras3 import registry, state
from tf_lottery.masking import plan


class _MaskConstraint:
    """``weight -> original_constraint(weight) * mask``; not serialised (the layer's own
    config keeps its own constraint, and ``strip`` restores it on the variable).

    On TensorFlow it reads the mask variable (live inside a compiled step). JAX's
    training step neither maps the mask into the optimizer's stateless scope nor keeps
    its value on the variable while ``fit`` runs, so there a host copy (``host``, kept in
    step by every mask write) is used, baked into the step when it is traced.
    """

    def __init__(self, mask, original=None):
        self.mask = mask
        self.original = original
        self.host = None
        self.live = None  # set by sparse training: a mask copy carried in the optimizer state

    def __call__(self, value):
        if self.original is not None:
            value = self.original(value)
        if self.live is not None:
            return value * ops.cast(self.live.value, value.dtype)
        if self.host is not None:
            return value * ops.cast(self.host, value.dtype)
        return value * ops.cast(self.mask.value, value.dtype)


def _host_masks() -> bool:
    return keras.config.backend() != "tensorflow"


_WRITE_BACK_BACKENDS = ("tensorflow", "torch")


def _writes_back(layer, weight) -> bool:
    """Whether the forward pass keeps ``weight`` masked (TensorFlow or PyTorch, no
    autocast); else its constraint does."""
    return (keras.config.backend() in _WRITE_BACK_BACKENDS
            and layer.compute_dtype == weight.dtype)


@keras.saving.register_keras_serializable(package="tf_lottery")
class MaskedLayer(keras.layers.Wrapper):
    """Wraps a prunable Keras 3 layer with one 0/1 mask per prunable weight.

    Args:
      layer: a layer of the covered classes (see ``tf_lottery.keras3.registry``) or one
        with ``get_prunable_weights()`` (``tf_lottery.keras3.PrunableLayer``).
      **kwargs: passed to ``keras.layers.Wrapper`` (``name``, ...).

    Masks start as all ones (float32, non-trainable); set them with ``set_masks`` or
    ``tfl.sparsify``. ``masked_weights`` lists ``(weight, mask)`` pairs.
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
                                   dtype="float32", initializer="ones", trainable=False,
                                   aggregation="only_first_replica")
            if isinstance(weight.constraint, _MaskConstraint):
                weight.constraint = weight.constraint.original
            if not _writes_back(self.layer, weight):
                weight.constraint = _MaskConstraint(mask, weight.constraint)
                self._sync_host(weight)
            pairs.append((weight, mask))
            owners.append((owner, attr))
            names.append(name)
        object.__setattr__(self, "_pairs", pairs)
        object.__setattr__(self, "_owners", owners)
        object.__setattr__(self, "_names", names)
        self.built = True

    def _sync_host(self, weight, value=None) -> None:
        """Refreshes the host copy of ``weight``'s mask used by its constraint (JAX)."""
        constraint = weight.constraint
        if isinstance(constraint, _MaskConstraint) and _host_masks():
            if value is None:
                value = keras.ops.convert_to_numpy(constraint.mask.value)
            constraint.host = np.asarray(value, dtype=bool)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        for weight, _ in self._pairs:
            self._sync_host(weight)

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

    def set_dense_gradients(self, on: bool, live_masks=None) -> None:
        """Hands the masking of this layer's weights to a sparse-training optimizer.

        While ``on``, the forward pass computes with the raw weights, which that optimizer
        (``tf_lottery.keras3.SparseOptimizer``) keeps exactly 0 where masked: it masks
        the gradients and its constraint re-zeroes the weights after every step. The
        backward pass then gives the dense gradient dL/d(w * m) (RigL's grow criterion)
        at no extra cost. ``live_masks`` (one variable per masked weight, or None) are
        the mask copies the weights' constraints read instead of the masks (on JAX, the
        optimizer's copies, carried in its state through a stateless step). Set it before
        the training step is traced; ``on=False`` restores the masked forward pass.
        """
        self._dense_gradients = bool(on)
        lives = list(live_masks) if live_masks is not None else [None] * len(self._pairs)
        for (weight, _), live in zip(self._pairs, lives):
            if isinstance(weight.constraint, _MaskConstraint):
                weight.constraint.live = live if on else None

    def call(self, *args, training=None, **kwargs):
        if self._takes_training:
            kwargs["training"] = training
        if self._dense_gradients:
            return self.layer.call(*args, **kwargs)
        write = bool(training) and keras.config.backend() in _WRITE_BACK_BACKENDS
        originals = []
        try:
            for (owner, attr), (weight, mask) in zip(self._owners, self._pairs):
                value = weight.value
                masked = value * ops.cast(mask.value, value.dtype)
                if write and not isinstance(weight.constraint, _MaskConstraint):
                    weight.assign(masked)
                originals.append((owner, attr, getattr(owner, attr)))
                object.__setattr__(owner, attr, masked)
            return self.layer.call(*args, **kwargs)
        finally:
            for owner, attr, original in originals:
                object.__setattr__(owner, attr, original)

    def compute_output_shape(self, *args, **kwargs):
        return self.layer.compute_output_shape(*args, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        return self.layer.compute_output_spec(*args, **kwargs)

    def get_masks(self) -> List[np.ndarray]:
        """The masks as float32 numpy arrays, in ``masked_weights`` order."""
        return [np.asarray(keras.ops.convert_to_numpy(m.value)) for _, m in self._pairs]

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
            self._sync_host(weight, value)

    def apply_masks(self) -> None:
        """Writes ``weight * mask`` into every masked weight (restores the invariant)."""
        for weight, mask in self._pairs:
            weight.assign(weight.value * ops.cast(mask.value, weight.dtype))

    def release(self):
        """Gives each masked variable back its own constraint; returns the inner layer."""
        for weight, _ in self._pairs:
            if isinstance(weight.constraint, _MaskConstraint):
                weight.constraint = weight.constraint.original
        return self.layer

    def get_config(self):
        return super().get_config()

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"),
                                                      custom_objects=custom_objects)
        return cls(layer, **config)
