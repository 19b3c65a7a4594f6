"""Per-weight sparsity distributions: uniform, Erdős–Rényi (ER) and ER-Kernel (ERK).

Pure numpy: shapes in, sparsities (fraction of zeros, 0..1) out. Follows Evci et
al. 2020 and the RigL reference: the ER(K) density of a weight is ``eps * raw``
with ``raw = (n_in + n_out) / (n_in * n_out)`` (ER, the last two dimensions) or
``raw = sum(shape) / prod(shape)`` (ERK, every dimension, raised to
``erk_power_scale``). One scale ``eps`` is solved so the non-zeros of the
sparsified weights total ``(1 - sparsity)`` of their parameters; a weight whose
density would exceed 1 is made dense, its would-be zeros are handed to the
others and ``eps`` is solved again.

Pinned weights (``custom``: a fixed sparsity, 0 for the dense ones) take no part
in the budget: "the sparsified weights" are the unpinned ones.
"""
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

METHODS = ("uniform", "er", "erk")


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Returns ``sparsity`` as a float, or raises ValueError unless it lies in [0, 1)."""
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(
            f"{what} must be in [0, 1) (the fraction of weights set to zero), got {sparsity!r}; "
            "e.g. 0.9 keeps 10% of the weights")
    return value


def _raw_density(shape: Sequence[int], method: str, erk_power_scale: float) -> float:
    if method == "erk":
        return (float(np.sum(shape)) / float(np.prod(shape))) ** erk_power_scale
    if len(shape) < 2:
        return 1.0
    n_in, n_out = shape[-2:]
    return (n_in + n_out) / (n_in * n_out)


def distribute(shapes: Mapping[str, Sequence[int]], sparsity: float, method: str = "erk",
               custom: Optional[Mapping[str, float]] = None,
               erk_power_scale: float = 1.0) -> Dict[str, float]:
    """Sparsity of each weight so that the unpinned ones hold ``sparsity`` zeros overall.

    Args:
      shapes: weight key -> weight shape, e.g. ``{"dense/kernel": (784, 300)}``.
      sparsity: target fraction of zeros over the unpinned weights, in [0, 1).
      method: ``"uniform"``, ``"er"`` or ``"erk"``.
      custom: weight key -> fixed sparsity (0.0 keeps that weight dense); these are
        excluded from the budget.
      erk_power_scale: exponent on the ERK raw density (1.0 in the paper).

    Returns:
      weight key -> sparsity in [0, 1), in the order of ``shapes``.
    """
    sparsity = check_sparsity(sparsity)
    if method not in METHODS:
        raise ValueError(f"unknown sparsity distribution {method!r}; use one of {METHODS}")
    custom = dict(custom or {})
    unknown = sorted(set(custom) - set(shapes))
    if unknown:
        raise ValueError(f"custom sparsities name unknown weights {unknown}; known: {list(shapes)}")
    for key, value in custom.items():
        check_sparsity(value, f"custom sparsity of {key!r}")
    free = [k for k in shapes if k not in custom]
    result = {k: float(custom[k]) for k in custom}
    if method == "uniform":
        result.update({k: sparsity for k in free})
        return {k: result[k] for k in shapes}

    params = {k: float(np.prod(shapes[k])) for k in free}
    raw = {k: _raw_density(shapes[k], method, erk_power_scale) for k in free}
    dense = set()
    while True:
        sparse = [k for k in free if k not in dense]
        if not sparse:
            break
        budget = sum((1.0 - sparsity) * params[k] for k in free) - sum(params[k] for k in dense)
        eps = budget / sum(raw[k] * params[k] for k in sparse)
        top = max(raw[k] for k in sparse)
        if eps * top <= 1.0:
            break
        dense.update(k for k in sparse if raw[k] == top)
    for k in free:
        result[k] = 0.0 if k in dense else float(max(0.0, 1.0 - eps * raw[k]))
    return {k: result[k] for k in shapes}


def parameter_weighted(sparsities: Mapping[str, float], shapes: Mapping[str, Sequence[int]],
                       groups: Mapping[str, Sequence[str]]) -> Dict[str, float]:
    """Sparsity of each group of weights (e.g. a layer's kernels), weighted by parameters."""
    out = {}
    for group, keys in groups.items():
        sizes = np.array([np.prod(shapes[k]) for k in keys], dtype=np.float64)
        values = np.array([sparsities[k] for k in keys], dtype=np.float64)
        out[group] = float(np.sum(sizes * values) / np.sum(sizes))
    return out

