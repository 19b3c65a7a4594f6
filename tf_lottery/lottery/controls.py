"""The controls of IMP tickets: networks trained at each ticket level (levels >= 1) beside
the ticket, never feeding the next level.

- ``"reinit"``: the ticket's masks on a fresh random initialisation, drawn from each
  layer's initializer with a different seed (``reinitialise``);
- ``"random_mask"``: random masks with the ticket's per-layer counts on theta_k.

Every control trains ``T - k`` iterations from iteration k, as the ticket does.
"""
from typing import Dict, List, Mapping

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.lottery.rewind import rewind, snapshot
from tf_lottery.masking import selection
from tf_lottery.masking.api import apply_masks, get_masks, set_masks

CONTROLS = ("reinit", "random_mask")
# added to the level's seed offset so that each kind draws its own data order
SEED_OFFSETS = {"reinit": 1, "random_mask": 2}


def _remap(masks: Mapping[str, np.ndarray], model) -> Dict[str, np.ndarray]:
    """``masks`` of one model onto another built by the same code (matched by order)."""
    keys = list(get_masks(model))
    values = list(masks.values())
    if len(keys) != len(values):
        raise ValueError("the control model has a different set of prunable weights")
    return dict(zip(keys, values))


def _initialised_weights(layer):
    """``(variable, initializer)`` of every weight ``layer`` draws from an initializer:
    an ``<x>_initializer`` attribute names the weight ``<x>``, ``<x>_kernel`` (recurrent,
    depthwise, pointwise) or ``<x>s`` (embeddings)."""
    for attr, initializer in list(vars(layer).items()):
        if not attr.endswith("_initializer") or initializer is None:
            continue
        base = attr[:-len("_initializer")].lstrip("_")
        for name in (base, base + "_kernel", base + "s"):
            variable = getattr(layer, name, None)
            if isinstance(variable, tf.Variable):
                if name == "bias" and getattr(layer, "unit_forget_bias", False):
                    break  # drawn by a function the cell builds itself; fixed, not random
                yield variable, keras.initializers.get(initializer)
                break


def reinitialise(model, seed: int) -> None:
    """Draws every initialised weight of ``model`` afresh from its layer's initializer.

    Covers kernels, recurrent kernels, depthwise / pointwise kernels, embeddings, biases
    and normalisation parameters. Seeded initializers get ``seed`` plus the layer's
    position, so the draw differs from the model's own initialisation even when
    ``model_fn`` pins a seed. Masked entries stay 0.
    """
    layers = [sub for layer in model.layers for sub in layer._flatten_layers()]
    for index, layer in enumerate(layers):
        for variable, initializer in _initialised_weights(layer):
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


def control_masks(runner, kind: str, level: int, masks: Mapping[str, np.ndarray], control
                  ) -> Mapping[str, np.ndarray]:
    """The masks control ``kind`` trains under at ``level``, given the ticket's ``masks``."""
    if kind == "random_mask":
        rng = np.random.default_rng([runner.seed, level])
        return {k: selection.random_mask(m.shape, 1.0 - np.count_nonzero(m) / m.size, rng)
                for k, m in masks.items()}
    return masks


def train_controls(runner, level: int, masks: Mapping[str, np.ndarray]) -> List[dict]:
    """Trains every control of ``runner`` at ``level`` (the ticket's ``masks``); their rows."""
    rows = []
    for kind in runner.controls:
        control, start = control_model(runner, kind)
        chosen = control_masks(runner, kind, level, masks, control)
        # masks first, then the start weights: rewinding under the previous level's
        # mask would leave the entries this mask turns on at 0
        set_masks(control, _remap(chosen, control))
        rewind(control, start)
        rows.append(runner._train(control, runner.k, level, kind))
    return rows
