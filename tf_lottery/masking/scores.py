"""Pruning-at-initialisation scores (SNIP, GraSP, SynFlow, random) and masks from scores.

Pure numpy. Every function here works on one weight's arrays; the gradients and
Hessian-gradient products they need come from ``tf_lottery.masking.init_scores``.
A score is an *importance*: masks keep the highest scores (``top_mask``, one weight at
a time, or ``global_top_masks``, one threshold over several weights). Counts are exact
as in ``selection``; ties go to the lower flat index.

References: Lee et al. 2019 (SNIP), Wang et al. 2020 (GraSP), Tanaka et al. 2020
(SynFlow), compared in Frankle et al. 2021 ("Pruning Neural Networks at Initialization:
Why are We Missing the Mark?").
"""
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tf_lottery.masking.selection import count_zeros, global_top_masks

METHODS = ("snip", "grasp", "synflow", "random")


def snip(weight: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """SNIP's connection sensitivity |dL/dw * w| (Lee et al. 2019, eq. 6 up to the
    normalisation, which does not change the ranking)."""
    return np.abs(np.asarray(grad, np.float64) * np.asarray(weight, np.float64))


def grasp(weight: np.ndarray, hg: np.ndarray) -> np.ndarray:
    """GraSP's score S(-w) = -w * Hg (Wang et al. 2020, eq. 8), ``hg`` the Hessian of the
    loss times its gradient. GraSP removes the *highest* S (removing them reduces the
    gradient flow least), so its importance is ``-grasp(...)``: see ``importance``."""
    return -np.asarray(weight, np.float64) * np.asarray(hg, np.float64)


def synflow(weight: np.ndarray, grad_r: np.ndarray) -> np.ndarray:
    """SynFlow's synaptic saliency |dR/dw * w| (Tanaka et al. 2020, eq. 7), with
    R = 1^T (prod_l |W_l|) 1 the output sum of the network with absolute weights on an
    all-ones input."""
    return np.abs(np.asarray(grad_r, np.float64) * np.asarray(weight, np.float64))


def random(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Uniform random scores: keeping the top ones prunes at random places."""
    return rng.random(tuple(shape))


def importance(method: str, score: np.ndarray) -> np.ndarray:
    """The score a mask keeps the highest of: ``-score`` for GraSP, ``score`` otherwise."""
    if method not in METHODS:
        raise ValueError(f"unknown score {method!r}; use one of {METHODS}")
    return -score if method == "grasp" else score


def synflow_densities(density: float, iterations: int) -> List[float]:
    """SynFlow's exponential schedule: the fraction kept after pruning round k = 1..n is
    ``density ** (k / n)`` (Tanaka et al. 2020, Algorithm 1), ending at ``density``."""
    if iterations < 1:
        raise ValueError(f"SynFlow needs iterations >= 1, got {iterations}")
    return [float(density) ** (k / iterations) for k in range(1, iterations + 1)]


def synflow_chain(kernels: Sequence[np.ndarray],
                  masks: Optional[Sequence[np.ndarray]] = None) -> List[np.ndarray]:
    """SynFlow scores of a bias-free chain of Dense kernels (``(in, out)`` each), in closed
    form: score[i, j] of layer l = a_l[i] * |W_l[i, j]| * b_l[j], with a_l the absolute
    network's activation on an all-ones input before layer l and b_l the sum of the
    absolute layers after l applied to unit j. A reference for the Keras version."""
    kernels = [np.abs(np.asarray(k, np.float64)) for k in kernels]
    if masks is not None:
        kernels = [k * np.asarray(m, np.float64) for k, m in zip(kernels, masks)]
    forward = [np.ones(kernels[0].shape[0])]
    for k in kernels[:-1]:
        forward.append(forward[-1] @ k)
    backward = [np.ones(kernels[-1].shape[1])]
    for k in reversed(kernels[1:]):
        backward.insert(0, k @ backward[0])
    return [f[:, None] * k * b[None, :] for f, k, b in zip(forward, kernels, backward)]


def top_mask(score: np.ndarray, sparsity: float,
             mask: Optional[np.ndarray] = None) -> np.ndarray:
    """A float32 0/1 mask keeping the highest ``score`` entries, with exactly
    ``count_zeros(size, sparsity)`` zeros; entries 0 in ``mask`` are never kept."""
    return global_top_masks({"w": score}, sparsity, None if mask is None else {"w": mask})["w"]


def masks_from_scores(scores: Mapping[str, np.ndarray], sparsity: Optional[float] = None,
                      sparsities: Optional[Mapping[str, float]] = None,
                      pinned: Optional[Mapping[str, float]] = None,
                      masks: Optional[Mapping[str, np.ndarray]] = None
                      ) -> Dict[str, np.ndarray]:
    """Masks keeping the highest importances: per weight at ``sparsities`` (key -> sparsity),
    or globally at ``sparsity`` over the keys not in ``pinned`` (key -> own sparsity)."""
    pinned = dict(pinned or {})
    get = (lambda k: None) if masks is None else (lambda k: masks[k])
    if sparsities is not None:
        return {k: top_mask(scores[k], sparsities[k], get(k)) for k in scores}
    free = [k for k in scores if k not in pinned]
    out = global_top_masks({k: scores[k] for k in free}, sparsity,
                           None if masks is None else {k: masks[k] for k in free})
    out.update({k: top_mask(scores[k], s, get(k)) for k, s in pinned.items()})
    return {k: out[k] for k in scores}
