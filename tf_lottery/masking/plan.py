"""Keras-free steps of ``sparsify`` / ``set_masks`` / ``sparsity_report``, shared by the
tf_keras path (``tf_lottery.masking.api``) and the Keras 3 path (``tf_lottery.keras3.api``).

The functions work on *units*: objects with ``.key`` (``"<layer name>/<weight name>"``),
``.inner.name`` (the user's layer name), ``.layer`` (wrapper or plain layer), ``.shape``
(tuple of ints) and ``.size`` (number of entries); and on numpy arrays. Layers are only
read by ``.name`` and class name. No Keras import here, so both paths can use it.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from tf_lottery.masking import distributions


def pins(units, dense_layers, custom_sparsity) -> Dict[str, float]:
    """Weight key -> pinned sparsity, from layer names (or weight keys): 0 for each name in
    ``dense_layers``, the given value for each entry of ``custom_sparsity``."""
    by_name: Dict[str, List[str]] = {}
    for u in units:
        by_name.setdefault(u.inner.name, []).append(u.key)
        by_name.setdefault(u.key, []).append(u.key)
    requested = [(n, 0.0) for n in (dense_layers or ())]
    requested += list((custom_sparsity or {}).items())
    unknown = sorted({n for n, _ in requested if n not in by_name})
    if unknown:
        names = sorted({u.inner.name for u in units})
        raise ValueError(f"dense_layers/custom_sparsity name {unknown}, which are not prunable "
                         f"layers of the model; prunable layers are {names}")
    result = {}
    for name, value in requested:
        distributions.check_sparsity(value, f"custom sparsity of {name!r}")
        for key in by_name[name]:
            result[key] = float(value)
    return result


def weight_sparsities(units, sparsity, method, dense_layers, custom_sparsity,
                      erk_power_scale) -> Dict[str, float]:
    """Weight key -> sparsity of every unit: ``method``'s distribution of ``sparsity`` over
    the units not pinned by ``dense_layers`` / ``custom_sparsity``."""
    return distributions.distribute({u.key: u.shape for u in units}, sparsity, method,
                                    pins(units, dense_layers, custom_sparsity), erk_power_scale)


def per_layer(units, values: Mapping[str, float]) -> Dict[str, float]:
    """Layer name -> parameter-weighted mean of the per-weight ``values`` of its units."""
    groups: Dict[str, List[str]] = {}
    for u in units:
        groups.setdefault(u.inner.name, []).append(u.key)
    return distributions.parameter_weighted(values, {u.key: u.shape for u in units}, groups)


def resolve_dense_layers(layers, units, unsupported, dense_layers, pruner: str,
                         fix: str) -> List[str]:
    """The prunable layer names ``dense_layers`` keeps dense (class names expanded).

    Args:
      layers: every layer of the model (``walk``).
      units: the prunable weights; unsupported: layers with trainable weights that
        cannot be pruned.
      dense_layers: layer names or layer class names (``"DepthwiseConv2D"``).
      pruner: who cannot prune them, for the error message (``"tfmot"``).
      fix: the end of the error message, saying how to make such a layer prunable.

    Raises ValueError if an unsupported layer is not listed: it would stay dense unnoticed.
    """
    layers = list(layers)
    classes = {type(layer).__name__ for layer in layers}
    skip = {n for n in (dense_layers or ()) if n not in classes}
    skip_classes = {n for n in (dense_layers or ()) if n in classes}
    skip |= {layer.name for layer in layers if type(layer).__name__ in skip_classes
             and (layer in unsupported or any(u.layer is layer for u in units))}
    blocked = [layer for layer in unsupported if layer.name not in skip]
    if blocked:
        raise ValueError(
            f"these layers have trainable weights but {pruner} cannot prune them: "
            + ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in blocked)
            + ". " + fix)
    return sorted(n for n in skip if n not in {layer.name for layer in unsupported})


def masked(units, model_name: str) -> list:
    """The units that carry a mask; ValueError if there is none (model not sparsified)."""
    result = [u for u in units if u.mask is not None]
    if not result:
        raise ValueError(f"model {model_name!r} has no MaskedLayer; call tfl.sparsify first")
    return result


def mask_updates(units, layers, masks: Mapping[str, np.ndarray]) -> List[Tuple]:
    """``[(masked layer, its full new mask list)]`` for ``set_masks``; layers without a key in
    ``masks`` are left out, the others keep their current masks for keys not given.

    ``units`` are the masked units, ``layers`` the masked layers (each with ``get_masks()``).
    Raises ValueError for a key of ``masks`` that names no masked weight.
    """
    known = {u.key for u in units}
    unknown = sorted(set(masks) - known)
    if unknown:
        raise ValueError(f"masks given for unknown weights {unknown}; known: {sorted(known)}")
    updates = []
    for layer in layers:
        keys = [u.key for u in units if u.layer is layer]
        if any(k in masks for k in keys):
            current = layer.get_masks()
            updates.append((layer, [masks.get(k, c) for k, c in zip(keys, current)]))
    return updates


def check_masks(owner: str, targets: Sequence[Tuple[str, tuple]], masks) -> List[np.ndarray]:
    """``masks`` as float32 arrays, one per ``(weight name, mask shape)`` of ``targets``;
    raises ValueError, naming ``owner`` (the layer), for a wrong count, shape or value."""
    masks = list(masks)
    if len(masks) != len(targets):
        raise ValueError(f"{owner}: expected {len(targets)} masks, got {len(masks)}")
    values = []
    for (name, shape), value in zip(targets, masks):
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{owner}: mask for {name} has shape {value.shape}, "
                             f"expected {tuple(shape)}")
        if not np.all((value == 0) | (value == 1)):
            raise ValueError(f"{owner}: masks must hold only 0s and 1s")
        values.append(value)
    return values


class SparsityReport(list):
    """Rows (dicts) of ``sparsity_report``; ``str()`` gives a printable table."""

    COLUMNS = ("layer", "weight", "shape", "params", "nonzeros", "sparsity", "mask")

    def table(self) -> str:
        """One line per weight; the ``mask`` column says "no" for unmasked rows (their
        sparsity is their share of exact zeros) and the total counts every row."""
        cells = [[str(c) for c in self.COLUMNS]]
        for i, row in enumerate(self):
            mask = "" if i == len(self) - 1 else ("yes" if row.get("masked", True) else "no")
            cells.append([row["layer"], row["weight"], "x".join(map(str, row["shape"])),
                          f"{row['params']:,}", f"{row['nonzeros']:,}",
                          f"{100 * row['sparsity']:.2f}%", mask])
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def sparsity_report(units, values: Mapping[str, np.ndarray],
                    masks: Mapping[str, np.ndarray]) -> SparsityReport:
    """One row per unit and a total row, from the weights' current ``values`` and the
    ``masks`` of the masked ones (weight key -> array); see ``tfl.sparsity_report``."""
    report = SparsityReport()
    for u in units:
        nonzeros = int(np.count_nonzero(values[u.key]))
        active = int(np.count_nonzero(masks[u.key])) if u.key in masks else nonzeros
        report.append({"layer": u.inner.name, "weight": u.key.split("/", 1)[1],
                       "shape": list(u.shape), "params": u.size, "nonzeros": nonzeros,
                       "active": active, "sparsity": 1.0 - active / u.size,
                       "masked": u.key in masks})
    params = sum(r["params"] for r in report)
    active = sum(r["active"] for r in report)
    report.append({"layer": "total", "weight": "", "shape": [], "params": params,
                   "nonzeros": sum(r["nonzeros"] for r in report), "active": active,
                   "sparsity": 1.0 - active / params,
                   "masked": all(r["masked"] for r in report)})
    return report
