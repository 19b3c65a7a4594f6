"""sparsify, strip, masks and reports for Keras 3 models (the Keras 3 side of ``tfl.*``).

Same contract as ``tf_lottery.masking.api`` (the tf_keras path): a *weight key* is
``"<layer name>/<weight name>"`` with the user's layer name (``"d1/kernel"``,
``"mha/query_kernel"``), the same for the wrapped and the plain model. Everything that
does not touch Keras (pins, per-weight sparsities, ``dense_layers``, mask checks, report
rows) is shared with that path: ``tf_lottery.masking.plan``, ``distributions``, ``selection``.
"""
import hashlib
from typing import Dict, List, Mapping, Optional, Sequence

import keras
import numpy as np

from tf_lottery.masking import agreement, distributions, graph, plan, selection
from tf_lottery.masking.plan import SparsityReport
from tf_lottery.keras3 import registry, state
from tf_lottery.keras3.wrapper import MaskedLayer, mask_array

MASK_INITS = ("random", "magnitude")


def _walk(layer):
    """Every layer of ``layer`` (nested models included), model order; wrappers not opened."""
    for sub in getattr(layer, "layers", []):
        yield sub
        if isinstance(sub, keras.Model):
            yield from _walk(sub)


class _Unit:
    """One prunable weight: its (wrapper or plain) layer, inner layer, variable, mask."""

    def __init__(self, layer, inner, weight, name, mask=None):
        self.layer, self.inner, self.weight, self.mask = layer, inner, weight, mask
        self.key = f"{inner.name}/{name}"
        self.shape = tuple(int(d) for d in weight.shape)
        self.size = int(np.prod(self.shape))

    def value(self) -> np.ndarray:
        return np.asarray(keras.ops.convert_to_numpy(self.weight.value))


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"expected a Keras 3 Model, got {type(model).__name__}")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: give it an Input or call it once "
                         "on data before sparsifying")


def _units(model, unsupported: Optional[List] = None) -> List[_Unit]:
    _check_model(model)
    units = []
    for layer in _walk(model):
        if isinstance(layer, MaskedLayer):
            units += [_Unit(layer, layer.layer, w, n, m)
                      for (w, m), n in zip(layer.masked_weights, layer.weight_names)]
            continue
        if isinstance(layer, keras.Model):
            continue
        weights = registry.prunable_weights(layer)
        if weights is None:
            if unsupported is not None and layer.trainable_weights:
                unsupported.append(layer)
            continue
        units += [_Unit(layer, layer, w,
                        registry.weight_name(layer, registry.find_owner(layer, w)[0], w))
                  for w in weights]
    return units


def _require_units(model, units):
    if not units:
        raise ValueError(f"model {model.name!r} has no prunable layer (Dense, Conv, Embedding, "
                         "... or a layer with get_prunable_weights())")


def sparsity_distribution(model, sparsity: float, method: str = "erk", dense_layers=(),
                          custom_sparsity: Optional[Mapping[str, float]] = None,
                          erk_power_scale: float = 1.0,
                          per_weight: bool = False) -> Dict[str, float]:
    """Per-layer (or per-weight) sparsity of every prunable layer of a Keras 3 ``model``;
    arguments as in ``tf_lottery.masking.api.sparsity_distribution``."""
    units = _units(model)
    _require_units(model, units)
    values = plan.weight_sparsities(units, sparsity, method, dense_layers, custom_sparsity,
                                    erk_power_scale)
    return values if per_weight else plan.per_layer(units, values)


def _check_traversable(model):
    functional = hasattr(model, "_nodes_by_depth")  # Keras 3 has no public "is functional"
    if not (isinstance(model, keras.Sequential) or functional):
        raise TypeError(
            f"model {model.name!r} is a subclassed model, which tf-lottery cannot rebuild; use "
            "the Sequential or functional API, or wrap its layers yourself with "
            "tf_lottery.keras3.MaskedLayer(layer) inside the model")


def sparsify(model, sparsity: float, distribution: str = "erk", mask_init: str = "random",
             seed: Optional[int] = None, dense_layers: Sequence[str] = (),
             custom_sparsity: Optional[Mapping[str, float]] = None,
             erk_power_scale: float = 1.0):
    """Wraps every prunable layer of a Keras 3 ``model`` in a ``MaskedLayer`` and draws masks.

    The returned model shares its layers (and weights) with ``model``; masked weights
    become 0. Arguments as in ``tf_lottery.masking.api.sparsify``.
    """
    _check_model(model)
    _check_traversable(model)
    if mask_init not in MASK_INITS:
        raise ValueError(f"unknown mask_init {mask_init!r}; use one of {MASK_INITS}")
    if distribution not in distributions.METHODS + ("global",):
        raise ValueError(f"unknown distribution {distribution!r}; use one of "
                         f"{distributions.METHODS + ('global',)}")
    if distribution == "global" and mask_init != "magnitude":
        raise ValueError("distribution='global' selects weights by magnitude across layers; "
                         "pass mask_init='magnitude'")
    sparsity = distributions.check_sparsity(sparsity)
    unsupported: List = []
    units = _units(model, unsupported)
    if any(u.mask is not None for u in units):
        raise ValueError(f"model {model.name!r} is already sparsified; change its masks with "
                         "tfl.set_masks, or tfl.strip it first")
    _require_units(model, units)
    dense_prunable = plan.resolve_dense_layers(
        _walk(model), units, unsupported, dense_layers, "tf-lottery",
        "Give the layer a get_prunable_weights() method (tf_lottery.keras3.PrunableLayer) to "
        "prune it, or list it in dense_layers")
    method = "uniform" if distribution == "global" else distribution
    sparsities = plan.weight_sparsities(units, sparsity, method, dense_prunable,
                                        custom_sparsity, erk_power_scale)
    if distribution == "global":
        pins = plan.pins(units, dense_prunable, custom_sparsity)
        values = {u.key: u.value() for u in units}
        free = [k for k in values if k not in pins]
        masks = selection.global_magnitude_masks({k: values[k] for k in free}, sparsity)
        masks.update({k: selection.magnitude_mask(values[k], s) for k, s in pins.items()})
    elif mask_init == "magnitude":
        masks = {u.key: selection.magnitude_mask(u.value(), sparsities[u.key]) for u in units}
    else:
        rng = np.random.default_rng(_shared_seed(model, seed))
        masks = {u.key: selection.random_mask(u.shape, sparsities[u.key], rng) for u in units}

    to_wrap = {id(u.layer) for u in units}
    wrapped = keras.models.clone_model(
        model, clone_function=lambda layer: MaskedLayer(layer) if id(layer) in to_wrap else layer,
        recursive=True)
    set_masks(wrapped, masks)
    if _strategy(wrapped) is not None:
        check_masks_agree(wrapped)
    return wrapped


def _strategy(model):
    """The multi-replica ``tf.distribute`` strategy in scope or ``model``'s (TensorFlow
    backend), else None."""
    if keras.config.backend() != "tensorflow":
        return None
    strategy = agreement.current_strategy(model)
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _shared_seed(model, seed):
    """``seed``, or one drawn from numpy's global generator (``keras.utils.set_random_seed``
    seeds it); under a multi-worker ``tf.distribute`` strategy the chief's, so that every
    worker draws the same masks."""
    if seed is None:
        seed = int(np.random.randint(0, 2**31 - 1))
    strategy = _strategy(model)
    return seed if strategy is None else agreement.chief_seed(seed, strategy)


def check_masks_agree(model, strategy=None) -> str:
    """Raises RuntimeError unless every device holds the same masks; returns a 16-hex-digit
    digest of them (as ``tf_lottery.masking.api.check_masks_agree``).

    TensorFlow: one all-gather of mask digests across the replicas and workers of
    ``strategy`` (default: the one in scope, else the model's); every worker must call it at
    the same point. JAX: every device's copy of each mask (``addressable_shards``; one
    process) must equal the first.
    """
    units = _masked_units(model)
    keys = [u.key for u in units]
    if keras.config.backend() == "tensorflow":
        return agreement.check_agree(keys, [u.mask.value for u in units],
                                     strategy or agreement.current_strategy(model))
    sync(model)
    differ = []
    digest = hashlib.sha256()
    for u in units:
        value = u.mask.value
        copies = ([np.asarray(s.data) for s in value.addressable_shards]
                  if hasattr(value, "addressable_shards") else [keras.ops.convert_to_numpy(value)])
        copies = [np.asarray(c, np.float32) for c in copies]
        differ += [f"device {i} on {u.key!r}" for i, c in enumerate(copies[1:], 1)
                   if c.shape != copies[0].shape or not np.array_equal(c, copies[0])]
        digest.update(np.ascontiguousarray(copies[0] != 0).tobytes())
    if differ:
        raise RuntimeError("masks differ from device 0's: " + "; ".join(differ) + ". Change "
                           "masks only through tf-lottery (tfl.set_masks and its updates)")
    return digest.hexdigest()[:16]


def masked_layers(model) -> List[MaskedLayer]:
    """The MaskedLayers of a Keras 3 ``model`` in model order (nested models included)."""
    return [layer for layer in _walk(model) if isinstance(layer, MaskedLayer)]


def _masked_units(model) -> List[_Unit]:
    return plan.masked(_units(model), model.name)


def sync(model) -> None:
    """Inside a JAX ``fit`` (a callback), writes the training loop's state back into the
    model's variables, so that reading or writing them sees the current step (and the
    loop reads the writes back at the next step); a no-op elsewhere. A live sparse-training
    wrapper's mask copies are written into the model's masks too, so a write to a weight
    is masked by the masks of this step."""
    state_sync = getattr(model, "jax_state_sync", None)
    if state_sync is not None:
        state_sync()
        sync_masks = getattr(getattr(model, "optimizer", None), "sync_masks", None)
        if sync_masks is not None:
            sync_masks()


def output_keys(model) -> List[str]:
    """Weight keys of the prunable layer(s) producing ``model``'s output(s) (as
    ``tf_lottery.masking.api.output_keys``)."""
    units = _units(model)
    prunable = {id(u.layer) for u in units}
    found = {id(layer) for layer in graph.output_layers(model, lambda l: id(l) in prunable)}
    return [u.key for u in units if id(u.layer) in found]


def get_masks(model) -> Dict[str, np.ndarray]:
    """Weight key -> mask (float32 0/1 array) of every MaskedLayer in ``model``."""
    sync(model)
    return {u.key: mask_array(u.mask) for u in _masked_units(model)}


def set_masks(model, masks: Mapping[str, np.ndarray], optimizer=None) -> None:
    """Sets masks by weight key (keys must exist) and keeps the invariant: entries turned
    off or on become 0 in the weights and get their initial optimizer state (the compiled
    optimizer's and ``optimizer``'s, one or a list, EMA copies included). A live
    ``tfl.SparseOptimizer`` among them trains on from the new masks."""
    sync(model)
    updates = plan.mask_updates(_masked_units(model), masked_layers(model), masks)
    table = state.SlotTable(state.live_optimizers(model, optimizer))
    for layer, values in updates:  # check every layer's masks before changing any
        layer.check_masks(values)
    for layer, values in updates:
        layer.set_masks(values, table)
    for wrapper in state.sparse_optimizers(model, optimizer):  # a live sparse-training
        wrapper.begin()  # optimizer trains on from the new masks


def apply_masks(model) -> None:
    """Re-zeroes every masked weight of ``model`` (after writing weights directly)."""
    sync(model)
    for layer in masked_layers(model):
        layer.apply_masks()


def get_weights(model) -> Dict[str, np.ndarray]:
    """Weight key -> current values of every prunable weight; masked entries re-zeroed."""
    apply_masks(model)
    return {u.key: u.value() for u in _units(model)}


def strip(model):
    """A plain Keras 3 model: wrappers removed, masked weights baked in as exact zeros.

    Shares its layers, and so its variables, with ``model`` and gives the same outputs.
    While ``model``'s MaskedLayers exist, a whole-value write to a shared variable
    (``assign``, ``load_weights``) stays masked, so ``model`` keeps its invariant; for a
    dense copy to write freely, clone the result (``keras.models.clone_model`` and
    ``set_weights``).
    """
    _check_model(model)
    _check_traversable(model)
    apply_masks(model)
    return keras.models.clone_model(
        model, recursive=True,
        clone_function=lambda layer: layer.release() if isinstance(layer, MaskedLayer) else layer)


def sparsity_report(model) -> SparsityReport:
    """Per-weight rows and a total row (layer, weight, shape, params, nonzeros, sparsity),
    as ``tf_lottery.masking.api.sparsity_report``."""
    units = _units(model)
    _require_units(model, units)
    return plan.sparsity_report(
        units, {u.key: u.value() for u in units},
        {u.key: mask_array(u.mask) for u in units if u.mask is not None})
