"""Which weights to keep: magnitude top-k (per weight or global) and random masks.

Pure numpy. A mask is a float32 array of 0s and 1s shaped like its weight. Counts
are exact: a weight of ``n`` entries at sparsity ``s`` has ``count_zeros(n, s)``
zeros. Ties between equal magnitudes go to the lower flat index (stable sort), so
the same weights always give the same mask.
"""
from typing import Collection, Dict, Mapping, Optional, Union

import numpy as np


def count_zeros(size: int, sparsity: float) -> int:
    """Number of zeros a weight of ``size`` entries has at ``sparsity`` (rounded half up)."""
    return int(min(size, np.floor(float(sparsity) * size + 0.5)))


def random_mask(shape, sparsity: float, rng: np.random.Generator) -> np.ndarray:
    """A mask with exactly ``count_zeros(prod(shape), sparsity)`` zeros at random places."""
    size = int(np.prod(shape))
    flat = np.ones(size, dtype=np.float32)
    flat[rng.permutation(size)[:count_zeros(size, sparsity)]] = 0.0
    return flat.reshape(shape)


def _scores(weight: np.ndarray, mask: Optional[np.ndarray]) -> np.ndarray:
    scores = np.abs(np.asarray(weight, dtype=np.float64)).ravel()
    if mask is not None:
        scores = np.where(np.asarray(mask).ravel() > 0, scores, -np.inf)
    return scores


def _keep_largest(scores: np.ndarray, n_keep: int) -> np.ndarray:
    keep = np.zeros(scores.size, dtype=np.float32)
    if n_keep > 0:
        order = np.argsort(-scores, kind="stable")
        keep[order[:n_keep]] = 1.0
    return keep


def magnitude_mask(weight: np.ndarray, sparsity: float,
                   mask: Optional[np.ndarray] = None) -> np.ndarray:
    """Keeps the largest-magnitude entries of ``weight`` so that it has ``sparsity`` zeros.

    Entries already 0 in ``mask`` stay pruned; ``sparsity`` is the total target for the
    weight (it must be at least the mask's own sparsity).
    """
    weight = np.asarray(weight)
    size = weight.size
    n_keep = size - count_zeros(size, sparsity)
    if mask is not None and n_keep > int(np.count_nonzero(mask)):
        raise ValueError(f"cannot reach sparsity {sparsity} by pruning: the mask already "
                         f"keeps only {int(np.count_nonzero(mask))} of {size} entries")
    return _keep_largest(_scores(weight, mask), n_keep).reshape(weight.shape)


def global_magnitude_masks(weights: Mapping[str, np.ndarray], sparsity: float,
                           masks: Optional[Mapping[str, np.ndarray]] = None
                           ) -> Dict[str, np.ndarray]:
    """One magnitude threshold across all ``weights``: the smallest go until ``sparsity`` of
    all their entries are zero (Frankle & Carbin section 4). Pruned entries stay pruned."""
    try:
        return global_top_masks({k: np.abs(np.asarray(w)) for k, w in weights.items()},
                                sparsity, masks)
    except ValueError as error:
        raise ValueError(f"cannot reach global sparsity {sparsity} by pruning: {error}") from None


def global_top_masks(scores: Mapping[str, np.ndarray], sparsity: float,
                     masks: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """One threshold over all ``scores``: the highest are kept until ``sparsity`` of all
    their entries are zero (global magnitude pruning; the global pruning SNIP, GraSP and
    SynFlow use). Entries 0 in ``masks`` are never kept; ties keep the earlier entry."""
    keys = list(scores)
    flat = []
    for k in keys:
        s = np.asarray(scores[k], np.float64).ravel()
        if not np.all(np.isfinite(s)):
            raise ValueError(f"scores of {k!r} are not finite (overflow?); for SynFlow on a "
                             "deep network, use fewer layers or a smaller input scale")
        if masks is not None:
            s = np.where(np.asarray(masks[k]).ravel() > 0, s, -np.inf)
        flat.append(s)
    flat = np.concatenate(flat)
    n_keep = flat.size - count_zeros(flat.size, sparsity)
    if masks is not None and n_keep > int(np.count_nonzero(np.isfinite(flat))):
        raise ValueError("the masks already keep fewer weights")
    keep = _keep_largest(flat, n_keep)
    out, start = {}, 0
    for k in keys:
        shape = np.shape(scores[k])
        n = int(np.prod(shape))
        out[k] = keep[start:start + n].reshape(shape)
        start += n
    return out


def prune_surviving(weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray],
                    fraction: Union[float, Mapping[str, float]],
                    scope: str = "layerwise",
                    pool: Optional[Collection[str]] = None) -> Dict[str, np.ndarray]:
    """One IMP pruning step: removes ``fraction`` of the surviving weights by magnitude.

    Args:
      weights: key -> trained weight values.
      masks: key -> current mask; the new masks are subsets of these.
      fraction: fraction of the currently surviving entries to prune, one number for
        all weights or key -> number (keys missing from the mapping are not pruned).
      scope: ``"layerwise"`` prunes each weight's own survivors by ``fraction``;
        ``"global"`` pools the survivors of the weights in ``pool`` and prunes the
        smallest of them together (one threshold, so layers lose different shares);
        every weight outside ``pool`` is pruned on its own.
      pool: the keys pooled by ``scope="global"`` (default: all); they must share one
        fraction. Membership is explicit: two weights that merely have equal fractions
        (an output layer pinned at the same rate) are not pooled unless listed here.

    Returns:
      key -> new mask.
    """
    if scope not in ("layerwise", "global"):
        raise ValueError(f"scope must be 'layerwise' or 'global', got {scope!r}")
    if isinstance(fraction, Mapping):
        fractions = {k: float(fraction.get(k, 0.0)) for k in weights}
    else:
        fractions = {k: float(fraction) for k in weights}
    for k, f in fractions.items():
        if not 0.0 <= f < 1.0:
            raise ValueError(f"pruning fraction of {k!r} must be in [0, 1), got {f}")
    pooled = []
    if scope == "global":
        pooled = list(weights) if pool is None else [k for k in weights if k in set(pool)]
        unknown = sorted(set(pool or ()) - set(weights))
        if unknown:
            raise ValueError(f"pool names unknown weights {unknown}; known: {list(weights)}")
        shares = sorted({fractions[k] for k in pooled})
        if len(shares) > 1:
            raise ValueError(f"scope='global' prunes its pool at one fraction, but the pooled "
                             f"weights have fractions {shares}; pass pool= with the keys that "
                             "share one fraction (the others are pruned layer by layer)")
    out: Dict[str, np.ndarray] = {}
    if len(pooled) > 1:
        f = fractions[pooled[0]]
        alive = sum(int(np.count_nonzero(masks[k])) for k in pooled)
        total = sum(int(np.size(masks[k])) for k in pooled)
        target = (total - alive + count_zeros(alive, f)) / total
        out.update(global_magnitude_masks({k: weights[k] for k in pooled}, target,
                                          {k: masks[k] for k in pooled}))
    for k in weights:
        if k in out:
            continue
        alive = int(np.count_nonzero(masks[k]))
        size = int(np.size(masks[k]))
        target = (size - alive + count_zeros(alive, fractions[k])) / size
        out[k] = magnitude_mask(weights[k], target, masks[k])
    return {k: out[k] for k in weights}


STRUCTURES = ("unstructured", "constant_fan_in")


def fan_in_count(shape, sparsity: float) -> int:
    """Inputs kept per output unit of a weight shaped ``(..., fan_in, out)`` (the last axis
    is the output unit: Dense ``(in, out)``, Conv ``(kh, kw, in, out)``) at ``sparsity``:
    ``fan_in - count_zeros(fan_in, sparsity)``, at least 1."""
    fan_in = int(np.prod(shape[:-1]))
    return max(1, fan_in - count_zeros(fan_in, sparsity))


def constant_fan_in_mask(shape, sparsity: float, rng: Optional[np.random.Generator] = None,
                         weight: Optional[np.ndarray] = None) -> np.ndarray:
    """A mask in which every output unit (last axis) keeps exactly ``fan_in_count`` inputs.

    The kept inputs of each unit are its largest-magnitude entries of ``weight`` (ties to
    the lower index) or, without ``weight``, drawn at random from ``rng``. A 1-D weight
    has one unit per entry and is returned dense. The mask's sparsity is ``sparsity``
    up to rounding per unit (SRigL, Lasby et al. 2023).
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return np.ones(shape, dtype=np.float32)
    fan_in, out = int(np.prod(shape[:-1])), shape[-1]
    k = fan_in_count(shape, sparsity)
    if weight is not None:
        scores = np.abs(np.asarray(weight, dtype=np.float64)).reshape(fan_in, out)
        keep = np.argsort(-scores, axis=0, kind="stable")[:k]
    else:
        if rng is None:
            raise ValueError("constant_fan_in_mask needs rng (random) or weight (magnitude)")
        keep = np.argsort(rng.random((fan_in, out)), axis=0)[:k]
    mask = np.zeros((fan_in, out), dtype=np.float32)
    np.put_along_axis(mask, keep, 1.0, axis=0)
    return mask.reshape(shape)


def fan_in_counts(mask: np.ndarray) -> np.ndarray:
    """Number of active inputs of each output unit (last axis) of ``mask``."""
    mask = np.asarray(mask)
    return np.count_nonzero(mask.reshape(-1, mask.shape[-1]), axis=0)
