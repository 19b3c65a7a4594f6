"""sparsify, strip, sparsity_distribution, sparsity_report: masks on whole models.

A *weight key* names one prunable weight as ``"<layer name>/<weight name>"`` using the
user's layer name (``"dense_1/kernel"``, ``"mha/query_kernel"``), the same for the
wrapped and the plain model. Functions that take layer names (``dense_layers``,
``custom_sparsity``) apply them to every prunable weight of the layer.
"""
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tf_lottery._keras import keras, tfmot
from tf_lottery.masking import agreement, distributions, graph, init_scores, selection
from tf_lottery.masking.units import Unit as _Unit
from tf_lottery.masking.units import check_model as _check_model
from tf_lottery.masking.units import require_units as _require_units
from tf_lottery.masking.units import units as _units
from tf_lottery.masking.units import walk as _walk
from tf_lottery.masking import plan
from tf_lottery.masking.plan import SparsityReport
from tf_lottery.masking.plan import pins as _pins
from tf_lottery.masking.wrapper import MaskedLayer
from tf_lottery.masking.state import live_optimizers

MASK_INITS = ("random", "magnitude") + init_scores.METHODS


def custom_objects() -> Dict[str, type]:
    """The custom objects that ``keras.models.load_model`` needs for a masked model."""
    return {"MaskedLayer": MaskedLayer, "tf_lottery>MaskedLayer": MaskedLayer}


def custom_object_scope():
    """``with tfl.custom_object_scope(): keras.models.load_model(path)``."""
    return keras.utils.custom_object_scope(custom_objects())


def _resolve_dense_layers(model, units, unsupported, dense_layers) -> List[str]:
    """The prunable layer names ``dense_layers`` keeps dense; see ``plan.resolve_dense_layers``."""
    return plan.resolve_dense_layers(
        _walk(model), units, unsupported, dense_layers, "tfmot",
        "tfmot's registry matches exact classes and leaves DepthwiseConv2D out: implement "
        "tfmot.sparsity.keras.PrunableLayer on the layer to prune it, or list it in "
        "dense_layers to leave it dense")


def _weight_sparsities(model, sparsity, method, dense_layers, custom_sparsity, erk_power_scale,
                       units=None) -> Dict[str, float]:
    units = units if units is not None else _units(model)
    _require_units(model, units)
    return plan.weight_sparsities(units, sparsity, method, dense_layers, custom_sparsity,
                                  erk_power_scale)


def sparsity_distribution(model, sparsity: float, method: str = "erk", dense_layers=(),
                          custom_sparsity: Optional[Mapping[str, float]] = None,
                          erk_power_scale: float = 1.0,
                          per_weight: bool = False) -> Dict[str, float]:
    """Per-layer sparsity (fraction of zeros) for every prunable layer of ``model``.

    Args:
      model: a built tf_keras model, plain or sparsified.
      sparsity: overall fraction of zeros of the layers not pinned, in [0, 1).
      method: ``"uniform"``, ``"er"`` (Erdős–Rényi) or ``"erk"`` (ER-Kernel), as in
        Evci et al. 2020; see ``tf_lottery.masking.distributions``.
      dense_layers: layer names (or layer class names, ``"DepthwiseConv2D"``) kept dense;
        they take no part in the budget. A layer tfmot cannot prune that has trainable
        weights must be listed here, as in ``sparsify``.
      custom_sparsity: layer name -> fixed sparsity; no part in the budget either.
      erk_power_scale: exponent on the ERK raw density.
      per_weight: key the result by weight key (``"layer/kernel"``) instead of layer name;
        a layer with several prunable weights (MultiHeadAttention, LSTM) otherwise gets
        the parameter-weighted sparsity of its weights.

    Returns:
      layer name (or weight key) -> sparsity, in model order.
    """
    unsupported: List = []
    units = _units(model, unsupported)
    _require_units(model, units)
    dense = _resolve_dense_layers(model, units, unsupported, dense_layers)
    values = _weight_sparsities(model, sparsity, method, dense, custom_sparsity,
                                erk_power_scale, units)
    return values if per_weight else plan.per_layer(units, values)


def _clone(model, clone_function):
    def recurse(layer):
        if isinstance(layer, keras.Model) and not isinstance(layer, MaskedLayer):
            return keras.models.clone_model(layer, clone_function=recurse)
        return clone_function(layer)
    return keras.models.clone_model(model, clone_function=recurse)


def _check_traversable(model, allow_wrapped: bool = False) -> bool:
    """True for a subclassed model when ``allow_wrapped`` (its layers are wrapped by the
    user); raises TypeError for a subclassed model otherwise; False for the others."""
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        if allow_wrapped:
            return True
        raise TypeError(
            f"model {model.name!r} is a subclassed model, which tf-lottery cannot rebuild; use "
            "the Sequential or functional API, or wrap its layers yourself with "
            "tfl.MaskedLayer(layer) inside the model")
    return False


def sparsify(model, sparsity: float, distribution: str = "erk", mask_init: str = "random",
             seed: Optional[int] = None, dense_layers: Sequence[str] = (),
             custom_sparsity: Optional[Mapping[str, float]] = None,
             erk_power_scale: float = 1.0, structure: str = "unstructured", data=None,
             loss=None, synflow_iterations: int = 100):
    """Wraps every prunable layer of ``model`` in a ``MaskedLayer`` and draws its masks.

    The returned model shares its layers (and so its weights) with ``model``, as
    ``tfmot.sparsity.keras.prune_low_magnitude`` does; masked weights become 0.

    Args:
      model: a built Sequential or functional tf_keras model (nested models are fine),
        or a built subclassed model whose prunable layers are ``tfl.MaskedLayer``s
        (``self.fc = tfl.MaskedLayer(keras.layers.Dense(10))``): its masks are drawn in
        place and the model itself is returned.
      sparsity: overall fraction of zeros over the layers not pinned, in [0, 1).
      distribution: ``"uniform"``, ``"er"``, ``"erk"``, or ``"global"`` (one threshold
        over all unpinned weights; needs ``mask_init="magnitude"`` or a score below).
      mask_init: ``"random"`` (exact zero counts at random places, RigL's start),
        ``"magnitude"`` (keep the largest current weights), or a pruning-at-initialisation
        score (``tf_lottery.masking.scores``): ``"snip"`` (|g * w|) and ``"grasp"``
        (-w * Hg) on the batch ``data``, ``"synflow"`` (data-free, ``synflow_iterations``
        rounds). Those three prune globally with ``distribution="global"``, as in their
        papers, else per layer at the distribution's sparsities.
      seed: seed of the random masks (numpy ``default_rng``). None draws one from numpy's
        global generator, which ``keras.utils.set_random_seed`` seeds, so a seeded
        program gets the same masks every run. Under a multi-worker
        ``MultiWorkerMirroredStrategy`` (sparsify called in its scope, or on a model
        built there) every worker uses the chief's seed, and the masks of all replicas
        and workers are compared afterwards (``check_masks_agree``).
      dense_layers, custom_sparsity, erk_power_scale: as in ``sparsity_distribution``.
        Layers tfmot cannot prune but that have trainable weights (a Dense subclass,
        DepthwiseConv2D) must be listed in ``dense_layers`` to be left dense; a class
        name there (``"DepthwiseConv2D"``) covers every layer of that class.
      structure: ``"unstructured"`` or ``"constant_fan_in"``: every output unit (last
        axis of a kernel) keeps the same number of inputs, at the weight's sparsity from
        ``distribution`` (SRigL; ``tf_lottery.masking.selection.constant_fan_in_mask``).
        RigL/SET/SNFS keep it when given ``structure="constant_fan_in"`` too, and
        ``tfl.export(..., condense=True)`` can run such layers as gathers.
      data, loss: the batch ``(x, y)`` SNIP and GraSP score on, and the loss (default:
        the compiled loss, else sparse categorical cross-entropy on logits).
      synflow_iterations: SynFlow's pruning rounds (exponential schedule; 100 in the paper).

    Returns:
      The sparsified model (not compiled).
    """
    _check_model(model)
    in_place = _check_traversable(model, allow_wrapped=True)
    if mask_init not in MASK_INITS:
        raise ValueError(f"unknown mask_init {mask_init!r}; use one of {MASK_INITS}")
    if distribution not in distributions.METHODS + ("global",):
        raise ValueError(f"unknown distribution {distribution!r}; use one of "
                         f"{distributions.METHODS + ('global',)}")
    if structure not in selection.STRUCTURES:
        raise ValueError(f"unknown structure {structure!r}; use one of {selection.STRUCTURES}")
    if structure == "constant_fan_in" and distribution == "global":
        raise ValueError("structure='constant_fan_in' needs a per-layer sparsity; use "
                         "distribution='erk' or 'uniform' instead of 'global'")
    if structure == "constant_fan_in" and mask_init not in ("random", "magnitude"):
        raise ValueError("structure='constant_fan_in' draws masks with mask_init='random' or "
                         f"'magnitude', not {mask_init!r}")
    if distribution == "global" and mask_init not in ("magnitude",) + init_scores.METHODS:
        raise ValueError("distribution='global' selects weights by score across layers; "
                         f"pass mask_init='magnitude' or one of {init_scores.METHODS}")
    init_scores.check_data(mask_init, data)
    unsupported: List = []
    units = _units(model, unsupported)
    if in_place:
        plain = sorted({u.layer.name for u in units if not isinstance(u.layer, MaskedLayer)
                        and u.layer.name not in set(dense_layers or ())
                        and type(u.layer).__name__ not in set(dense_layers or ())})
        unwrapped = {u.layer.name for u in units if not isinstance(u.layer, MaskedLayer)}
        units = [u for u in units if isinstance(u.layer, MaskedLayer)]
        dense_layers = [n for n in (dense_layers or ()) if n not in unwrapped]
        if plain or not units:
            raise TypeError(
                f"model {model.name!r} is a subclassed model, which tf-lottery cannot rebuild, "
                f"and its prunable layers {plain} are not wrapped; use the Sequential or "
                "functional API, or wrap them yourself inside the model (self.fc = "
                "tfl.MaskedLayer(keras.layers.Dense(...))), build it, then call tfl.sparsify "
                "on it to draw the masks in place")
    elif any(isinstance(u.layer, MaskedLayer) for u in units):
        raise ValueError(f"model {model.name!r} is already sparsified; change its masks with "
                         "tfl.set_masks, or tfl.strip it first")
    _require_units(model, units)
    dense_prunable = _resolve_dense_layers(model, units, unsupported, dense_layers)
    method = "uniform" if distribution == "global" else distribution
    sparsities = _weight_sparsities(model, distributions.check_sparsity(sparsity), method,
                                     dense_prunable, custom_sparsity, erk_power_scale, units)
    values = {u.key: u.weight.numpy() for u in units}
    if structure == "constant_fan_in":
        rng = np.random.default_rng(seed)
        masks = {u.key: (selection.constant_fan_in_mask(u.shape, sparsities[u.key], rng=rng)
                         if mask_init == "random" else
                         selection.constant_fan_in_mask(u.shape, sparsities[u.key],
                                                        weight=values[u.key]))
                 if sparsities[u.key] > 0 else np.ones(u.shape, np.float32) for u in units}
    elif mask_init in init_scores.METHODS:
        pins = _pins(units, dense_prunable, custom_sparsity)
        glob = distribution == "global"
        masks = init_scores.score_masks(
            model, {u.key: u.weight for u in units}, mask_init, sparsity if glob else None,
            None if glob else sparsities, pins if glob else None, data, loss,
            synflow_iterations)
    elif distribution == "global":
        pins = _pins(units, dense_prunable, custom_sparsity)
        free = [u.key for u in units if u.key not in pins]
        masks = selection.global_magnitude_masks({k: values[k] for k in free}, sparsity)
        masks.update({k: selection.magnitude_mask(values[k], s) for k, s in pins.items()})
    elif mask_init == "magnitude":
        masks = {k: selection.magnitude_mask(values[k], sparsities[k]) for k in values}
    else:
        strategy = agreement.current_strategy(model)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        rng = np.random.default_rng(agreement.chief_seed(seed, strategy))
        masks = {u.key: selection.random_mask(u.shape, sparsities[u.key], rng) for u in units}

    if in_place:
        set_masks(model, masks)
        return model
    to_wrap = {id(u.layer) for u in units}
    wrapped = _clone(model, lambda layer: MaskedLayer(layer) if id(layer) in to_wrap else layer)
    set_masks(wrapped, masks)
    if agreement.current_strategy(wrapped).num_replicas_in_sync > 1:
        check_masks_agree(wrapped)
    return wrapped


def check_masks_agree(model, strategy=None) -> str:
    """Raises RuntimeError unless every replica and worker holds the same masks.

    Compares a digest of every mask of ``model`` across all replicas and workers of
    ``strategy`` (default: the one in scope, else the model's), with one all-gather;
    every worker must call it at the same point. ``sparsify`` calls it under a
    multi-replica strategy; call it after changing masks yourself (e.g. from a callback
    after a mask update). See ``tf_lottery.masking.agreement``.

    Returns:
      a 16-hex-digit digest of the masks, the same on every worker.
    """
    units = _masked_units(model)
    strategy = strategy or agreement.current_strategy(model)
    return agreement.check_agree([u.key for u in units], [u.mask for u in units], strategy)


def masked_layers(model) -> List[MaskedLayer]:
    """The MaskedLayers of ``model`` in model order (nested models included)."""
    return [layer for layer in _walk(model) if isinstance(layer, MaskedLayer)]


def _masked_units(model) -> List[_Unit]:
    return plan.masked(_units(model), model.name)


def output_keys(model) -> List[str]:
    """Weight keys of the prunable layer(s) that produce ``model``'s output(s).

    Followed back from each output past layers with nothing to prune (Activation,
    Dropout, Reshape, nested models), so a classifier ending in ``Dense -> Softmax``
    gives the Dense layer's keys; see ``tf_lottery.masking.graph``.
    """
    units = _units(model)
    prunable = {id(u.layer) for u in units}
    found = {id(layer) for layer in graph.output_layers(model, lambda l: id(l) in prunable)}
    return [u.key for u in units if id(u.layer) in found]


def get_masks(model) -> Dict[str, np.ndarray]:
    """Weight key -> mask (float32 0/1 array) of every MaskedLayer in ``model``."""
    return {u.key: u.mask.numpy() for u in _masked_units(model)}


def set_masks(model, masks: Mapping[str, np.ndarray], optimizer=None) -> None:
    """Sets masks by weight key; keys must all exist.

    Entries turned off become exactly 0 in the weights and in the state of the model's
    compiled optimizer and of ``optimizer`` (one or a list, e.g. a custom loop's): its
    slots get their initial values and EMA copies 0, so no optimizer moves them again.
    Entries turned on start at 0 with fresh optimizer state.
    """
    updates = plan.mask_updates(_masked_units(model), masked_layers(model), masks)
    optimizers = live_optimizers(model, optimizer)
    for layer, values in updates:  # check every layer's masks before changing any
        layer.check_masks(values)
    for layer, values in updates:
        layer.set_masks(values, optimizers)


def apply_masks(model) -> None:
    """Re-zeroes every masked weight of ``model`` (after writing weights directly)."""
    for layer in masked_layers(model):
        layer.apply_masks()


def get_weights(model) -> Dict[str, np.ndarray]:
    """Weight key -> current values of every prunable weight (wrapped or plain); masked
    entries are re-zeroed first, so they read exactly 0."""
    for layer in masked_layers(model):
        layer.apply_masks()
    return {u.key: u.weight.numpy() for u in _units(model)}


def strip(model):
    """A plain tf_keras model: wrappers removed, masked weights baked in as exact zeros.

    The result shares its layers with ``model`` (as tfmot's ``strip_pruning`` does) and
    gives the same outputs. ``tfmot.sparsity.keras.strip_pruning(model)`` also works on
    sparsified models; ``strip`` additionally re-applies the masks first, so an increment
    made behind the wrapper's back cannot leak through. The variables are shared too: while
    ``model``'s MaskedLayers exist, a whole-value write to one of them (``assign``,
    ``load_weights``) stays masked, so ``model`` keeps its invariant; for a dense copy to
    write freely, clone the result (``keras.models.clone_model`` and ``set_weights``).
    """
    _check_model(model)
    _check_traversable(model)
    apply_masks(model)
    return tfmot.sparsity.keras.strip_pruning(model)


def _unprunable_kernels(model, units) -> List[_Unit]:
    """Kernels (trainable weights of rank >= 2) of layers tfmot cannot prune, e.g. a
    DepthwiseConv2D or a Dense subclass left dense through ``dense_layers``."""
    unsupported: List = []
    _units(model, unsupported)
    seen = {id(u.weight) for u in units}
    return [_Unit(layer, layer, w) for layer in unsupported for w in layer.trainable_weights
            if len(w.shape) >= 2 and id(w) not in seen]


def sparsity_report(model) -> SparsityReport:
    """Per-weight rows and a total row: layer, weight, shape, params, nonzeros, sparsity,
    masked.

    Every weight that could be pruned is counted, masked or not: the prunable weights of
    every layer (wrapped in a MaskedLayer or plain; a layer left dense through
    ``dense_layers`` shows 0% or the zeros it has) and the kernels of layers tfmot cannot
    prune (a DepthwiseConv2D, a Dense subclass). ``masked`` says whether a row has a mask;
    the total is over all rows, so it is the model's real sparsity.

    ``nonzeros`` counts the non-zero values of the weight as stored (exact zeros are
    what a user sees). ``sparsity`` is 1 - active / params, where active is the mask's
    count of ones for a masked weight (a just-grown RigL weight is active but still 0)
    and the non-zero count for an unmasked one. Works on sparsified and on plain models.
    """
    units = _units(model)
    units += _unprunable_kernels(model, units)
    _require_units(model, units)
    order = {id(layer): i for i, layer in enumerate(_walk(model))}
    units = sorted(units, key=lambda u: order.get(id(u.layer), len(order)))
    return plan.sparsity_report(units, {u.key: u.weight.numpy() for u in units},
                                {u.key: u.mask.numpy() for u in units if u.mask is not None})
