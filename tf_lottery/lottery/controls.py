"""The controls of IMP tickets: networks trained at each ticket level (levels >= 1) beside
the ticket, never feeding the next level.

- ``"reinit"``: the ticket's masks on a fresh random initialisation, drawn from each
  layer's initializer with a different seed (``reinitialise``);
- ``"random_mask"``: random masks with the ticket's per-layer counts on theta_k;
- pruning at initialisation (``PAI``): ``"pai_snip"``, ``"pai_grasp"``, ``"pai_synflow"``
  and ``"pai_random"`` prune theta_k (the initialisation when k = 0) in one shot by that
  score (``tf_lottery.masking.init_scores``; random: uniform random scores) to the
  ticket's sparsity under the ticket's rule: with ``scope="layerwise"`` each weight at
  the ticket's own count, with ``scope="global"`` one threshold over the pooled weights
  at their total count (the output layer and ``layer_fractions`` layers at their own).
  SNIP and GraSP score on one training batch (``batch_size`` examples drawn with the
  run's seed; the first batch of a ``tf.data`` dataset).

Every control trains ``T - k`` iterations from iteration k, as the ticket does.
"""
from typing import Dict, List, Mapping

import numpy as np

from tf_lottery._keras import tf
from tf_lottery.dispatch import apply_masks, get_masks, is_keras3, keras_of, set_masks
from tf_lottery.lottery.rewind import rewind, snapshot
from tf_lottery.masking import init_scores, scores, selection
from tf_lottery.masking.units import units

PAI = ("pai_snip", "pai_grasp", "pai_synflow", "pai_random")
CONTROLS = ("reinit", "random_mask") + PAI
# added to the level's seed offset so that each kind draws its own random numbers (dropout,
# initialisers); the data order is one per run (its seed), the same for every level and kind
SEED_OFFSETS = {"reinit": 1, "random_mask": 2, "pai_snip": 3, "pai_grasp": 4,
                "pai_synflow": 5, "pai_random": 6}


def _remap(masks: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
    """``masks`` of one model onto another built by the same code (matched by order)."""
    keys = list(get_masks(model))
    values = list(masks.values())
    if len(keys) != len(values):
        raise ValueError("the control model has a different set of prunable weights")
    return dict(zip(keys, values))


def _initialised_weights(layer, k):
    """``(variable, initializer)`` of every weight ``layer`` (of Keras module ``k``) draws
    from an initializer:
    an ``<x>_initializer`` attribute names the weight ``<x>``, ``<x>_kernel`` (recurrent,
    depthwise, pointwise) or ``<x>s`` (embeddings)."""
    for attr, initializer in list(vars(layer).items()):
        if not attr.endswith("_initializer") or initializer is None:
            continue
        base = attr[:-len("_initializer")].lstrip("_")
        for name in (base, base + "_kernel", base + "s"):
            variable = getattr(layer, name, None)
            if isinstance(variable, (tf.Variable, getattr(k, "Variable", tf.Variable))):
                if name == "bias" and getattr(layer, "unit_forget_bias", False):
                    break  # drawn by a function the cell builds itself; fixed, not random
                yield variable, k.initializers.get(initializer)
                break


def reinitialise(model, seed: int) -> None:
    """Draws every initialised weight of ``model`` afresh from its layer's initializer.

    Covers kernels, recurrent kernels, depthwise / pointwise kernels, embeddings, biases
    and normalisation parameters. Seeded initializers get ``seed`` plus the layer's
    position, so the draw differs from the model's own initialisation even when
    ``model_fn`` pins a seed. Masked entries stay 0.
    """
    k = keras_of(model)
    # neither Keras has a public "every sublayer" walk; both keep _flatten_layers
    layers = [sub for layer in model.layers for sub in layer._flatten_layers()]
    for index, layer in enumerate(layers):
        for variable, initializer in _initialised_weights(layer, k):
            config = initializer.get_config()
            if "seed" in config:
                config["seed"] = seed * 1009 + index
            fresh = type(initializer).from_config(config)
            variable.assign(fresh(variable.shape, getattr(variable, "true_dtype", variable.dtype)))
    apply_masks(model)


def control_model(runner, kind: str):
    """The model of control ``kind`` of the IMP ``runner`` (built once, kept in
    ``runner._control_models``) and the weights it restarts from at every level."""
    if kind not in runner._control_models:
        control = runner._build("reinit" if kind == "reinit" else "ticket")
        if kind == "reinit":
            reinitialise(control, runner.seed + 1)
        start = snapshot(control) if kind == "reinit" else runner._theta_k
        runner._control_models[kind] = (control, start)
    return runner._control_models[kind]


def _scoring_batch(runner):
    """The ``(x, y)`` batch SNIP and GraSP score on (the same at every level)."""
    data = runner.train_data
    if isinstance(data, tf.data.Dataset):
        return next(iter(data))
    x, y = data
    rng = np.random.default_rng([runner.seed, 7])
    chosen = np.sort(rng.permutation(len(x))[:int(runner.batch_size or 60)])
    return x[chosen], y[chosen]


def pai_masks(runner, kind: str, level: int, masks: Mapping[str, np.ndarray], control,
              start) -> Dict[str, np.ndarray]:
    """Masks of pruning-at-initialisation control ``kind`` at the ticket's sparsity (its
    ``masks``, keyed as ``control``'s): ``control`` is scored at ``start`` (theta_k)."""
    sparsity = {k: 1.0 - np.count_nonzero(m) / m.size for k, m in masks.items()}
    common = {"sparsities": sparsity}
    if runner.scope == "global":
        pool = set(runner._fractions(control)[1])
        zeros = sum(m.size - np.count_nonzero(m) for k, m in masks.items() if k in pool)
        common = {"sparsity": zeros / sum(masks[k].size for k in pool),
                  "pinned": {k: s for k, s in sparsity.items() if k not in pool}}
    if kind == "pai_random":
        rng = np.random.default_rng([runner.seed, level, 6])
        return scores.masks_from_scores({k: rng.random(m.shape) for k, m in masks.items()},
                                        **common)
    if is_keras3(control):
        raise ValueError(f"the {kind} control scores tf_keras models only for now; on a Keras 3 "
                         "model use controls reinit, random_mask or pai_random")
    set_masks(control, {k: np.ones_like(m) for k, m in masks.items()})
    rewind(control, start)
    method = kind[len("pai_"):]
    batch = _scoring_batch(runner) if method in init_scores.NEEDS_DATA else None
    weights = {u.key: u.weight for u in units(control)}
    return init_scores.score_masks(control, weights, method, data=batch, loss=runner.loss,
                                   **common)


def control_masks(runner, kind: str, level: int, masks: Mapping[str, np.ndarray], control
                  ) -> Mapping[str, np.ndarray]:
    """The masks control ``kind`` trains under at ``level``, given the ticket's ``masks``
    (keyed as ``control``'s)."""
    if kind == "random_mask":
        rng = np.random.default_rng([runner.seed, level])
        return {k: selection.random_mask(m.shape, 1.0 - np.count_nonzero(m) / m.size, rng)
                for k, m in masks.items()}
    if kind in PAI:
        return pai_masks(runner, kind, level, masks, control, runner._control_models[kind][1])
    return masks


def train_controls(runner, level: int, masks: Mapping[str, np.ndarray]) -> List[dict]:
    """Trains every control of ``runner`` at ``level`` (the ticket's ``masks``); their rows."""
    rows = []
    for kind in runner.controls:
        control, start = control_model(runner, kind)
        chosen = control_masks(runner, kind, level, _remap(masks, control), control)
        # masks first, then the start weights: rewinding under the previous level's
        # mask would leave the entries this mask turns on at 0
        set_masks(control, chosen)
        rewind(control, start)
        rows.append(runner._train(control, runner.k, level, kind))
    return rows
