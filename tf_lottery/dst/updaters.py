"""The drop/grow rules of dynamic sparse training, as tensor functions (TensorFlow or JAX).

One mask update of one weight (an "update" of a *unit*) works on flat tensors:

1. n_drop = floor(n_active * drop_fraction);
2. keep the n_active - n_drop active entries with the largest *drop score*
   (``|w|``: the smallest-magnitude active weights are dropped);
3. grow the n_drop entries with the largest *grow score* among all entries not kept,
   which includes the ones just dropped (a dropped weight may be regrown, as in the
   RigL reference; it then keeps its value);

so the number of active entries of every unit stays exactly constant. With
``structure="constant_fan_in"`` the counts are taken per output unit (last axis of the
weight) and ``select_per_unit`` drops and grows within each unit, so every output unit
keeps its number of inputs (SRigL, Lasby et al. 2023). Ties (equal
magnitudes, e.g. freshly grown weights, or equal gradients) are broken by one stateless
random permutation seeded by (seed, unit index, step): exact tie-breaking that never
reorders distinct scores, and the same on every replica and worker (no Python
``hash()``, no stateful RNG).

Each method is a small class overriding one hook, ``grow_scores``:

- ``RigLUpdater``: |dense gradient| dL/d(w * m) of the loss on the current batch,
  all-reduced across replicas (Evci et al. 2020);
- ``SETUpdater``: uniform random scores (Mocanu et al. 2018);
- ``SNFSUpdater``: |momentum of the dense gradient| (Dettmers & Zettlemoyer 2019, as
  simplified in the RigL paper: no redistribution of sparsity across layers). The
  momentum is an exponential moving average of the all-reduced dense gradient kept by
  the callback and updated at every step, so SNFS needs the dense gradient at every
  step (in TensorFlow, with dense kernels, this costs no more than the masked one);
- ``StaticUpdater``: never updates (the static sparse baseline);
- ``MagnitudePruningUpdater``: only drops, to a target sparsity given per update
  (gradual magnitude pruning, Zhu & Gupta 2018).

Everything here is pure tensor math (no variables, no numpy) written against the array
namespace ``xp`` of ``tf_lottery.dst.arrays`` (TensorFlow by default; JAX for Keras 3 on
JAX), usable inside a compiled train step on any device; ``assign_mask`` (tf_keras:
``tf_lottery.masking.update``, Keras 3: ``tf_lottery.keras3.state``) writes the result.
"""
from typing import Any, NamedTuple, Optional

from tf_lottery.dst import arrays

#: When an updater needs the dense gradient dL/d(w * m).
GRAD_NEVER, GRAD_AT_UPDATES, GRAD_EVERY_STEP = "never", "update_steps", "every_step"

_SALT_TIES, _SALT_GROW = 0x7135, 0x6720


class UnitState(NamedTuple):
    """What an updater may look at for one masked weight at one update.

    Attributes:
      weight: current weight values (after this step's optimizer update).
      mask: current 0/1 mask (float).
      grad: the dense gradient dL/d(w * m) of this step, all-reduced across replicas,
        or None if the updater does not need it.
      momentum: the moving average of the dense gradient (SNFS), or None.
      seed: the stateless seed of this unit at this step (``xp.unit_seed``).
      xp: the array namespace of the tensors (``tf_lottery.dst.arrays``; TensorFlow by
        default).
      k_max: optional Python int, an expected bound on the active entries (e.g. their
        count when the training step was traced): selections of at most ``k_max``
        entries then use a partial ``top_k`` instead of a full sort, with the same result
        (a larger count falls back to the full sort).
      k_change: optional Python int, an expected bound on the entries one update drops
        (and grows), e.g. ``floor(k_max * alpha)`` for a drop fraction that never exceeds
        ``alpha``: the selections then use ``top_k`` of ``k_change`` entries, usually
        several times fewer than ``k_max``, with the same result (a larger count falls
        back to the full sort).
    """
    weight: Any
    mask: Any
    grad: Optional[Any] = None
    momentum: Optional[Any] = None
    seed: Optional[Any] = None
    xp: Any = arrays.TF
    k_max: Optional[int] = None
    k_change: Optional[int] = None


def unit_seed(seed: int, unit_index: int, step, xp=arrays.TF):
    """The stateless seed of one unit at one step: a function of (seed, unit, step) only."""
    return xp.unit_seed(seed, unit_index, step)


def top_k_mask(scores, k, xp=arrays.TF):
    """0/1 float32 vector with exactly ``k`` ones at the largest ``scores`` (1-D).

    Ties go to the lower index. Sorts the whole vector (static shapes: XLA/TPU-safe;
    ``k`` may be a tensor).
    """
    n = xp.size(scores)
    order = xp.argsort_desc(scores)
    ones = xp.cast(xp.arange(n) < xp.cast(k, xp.int32), xp.float32)
    return xp.scatter(order, ones, n)


def _top_k_by_ties(scores, tie_keys, k, k_max: int, xp, larger_keys_first: bool = False):
    """``top_k_mask`` of the scores a random permutation put in the order of the tie keys
    (ascending, ties to the lower index), i.e. the ``k`` largest ``scores`` with ties
    going to the smaller tie keys, without a full sort: the threshold from
    ``xp.kth_largest`` (a ``top_k``, or counting passes under XLA), and
    a ``top_k`` of ``k_max`` tie keys only when entries tie at the threshold (requires
    ``k <= k_max``). ``tie_keys`` is a function returning them (they are drawn only then).
    ``larger_keys_first``: ties go to the larger tie keys, then to the higher index."""
    n = xp.size(scores)
    k = xp.cast(k, xp.int32)
    threshold = xp.kth_largest(scores, k, k_max)
    above = scores > threshold
    rest = k - xp.sum(xp.cast(above, xp.int32))  # how many of the tied entries to take
    at = scores == threshold
    minus_inf = xp.asarray(-float("inf"), xp.float32)

    def by_tie_keys():
        if larger_keys_first:  # reversed, so that top_k's lower index is the higher one
            _, tied = xp.top_k(_reverse(xp.where(at, tie_keys(), minus_inf), xp), k_max)
            tied = n - 1 - tied
        else:
            _, tied = xp.top_k(xp.where(at, -tie_keys(), minus_inf), k_max)
        return xp.scatter(tied, xp.cast(xp.arange(k_max) < rest, xp.float32), n)

    # Usually the threshold entry is the only one at the threshold (distinct scores):
    # then every tied entry is taken and the tie keys are not needed.
    picked = xp.cond(xp.equal(xp.sum(xp.cast(at, xp.int32)), rest),
                     lambda: xp.cast(at, xp.float32), by_tie_keys)
    return xp.cast(above, xp.float32) + picked


def _reverse(x, xp):
    n = xp.size(x)
    return xp.take(x, n - 1 - xp.arange(n))


def drop_count(n_active, fraction, xp=arrays.TF):
    """floor(n_active * fraction) as int32 (the RigL reference rounds down)."""
    n = xp.cast(n_active, xp.float32) * xp.cast(fraction, xp.float32)
    return xp.cast(xp.floor(n), xp.int32)


def select(drop_scores, grow_scores, mask, n_keep, n_grow, tie_seed, xp=arrays.TF,
           k_max: Optional[int] = None, k_change: Optional[int] = None):
    """The new 0/1 mask (float32, shaped like ``mask``).

    Keeps the ``n_keep`` active entries with the largest ``drop_scores`` and switches on
    the ``n_grow`` entries with the largest ``grow_scores`` among those not kept. Ties are
    broken by a random permutation drawn from ``tie_seed``.

    Requires ``n_keep <= active`` and ``n_grow <= size - n_keep`` (the caller's counts
    guarantee both); then the result has exactly ``n_keep + n_grow`` ones. Given a Python
    int ``k_max`` bounding ``n_keep`` and ``n_grow`` (e.g. the active count when the step
    was traced), two partial ``top_k`` of ``k_max`` entries replace the full sorts, with
    the same result (a larger count falls back to the sorts). Given a Python int
    ``k_change`` bounding the entries dropped and grown, the kept set is found as the
    complement of the dropped one, with ``top_k`` of ``k_change`` entries.
    """
    shape = xp.shape(mask)
    active = xp.reshape(xp.cast(mask, xp.float32), [-1]) > 0.5
    n = xp.size(active)
    tie_keys = lambda: xp.uniform_n(n, tie_seed)  # noqa: E731  (drawn when needed)
    lowest = xp.lowest
    minus_inf = xp.asarray(-float("inf"), xp.float32)
    # Inactive entries can never be kept: their drop score is below every active one.
    d = xp.reshape(xp.cast(drop_scores, xp.float32), [-1])
    d = xp.where(active, xp.where(xp.isnan(d), lowest, d), minus_inf)
    g = None
    if grow_scores is not None:
        g = xp.reshape(xp.cast(grow_scores, xp.float32), [-1])
        g = xp.where(xp.isnan(g), lowest, g)

    def full():
        perm = xp.argsort(tie_keys())
        keep = top_k_mask(xp.take(d, perm), n_keep, xp)
        new = keep
        if g is not None:
            # Kept entries rank below every candidate (-inf < lowest finite float).
            candidates = xp.where(keep > 0.5, minus_inf, xp.take(g, perm))
            new = keep + top_k_mask(candidates, n_grow, xp)
        return xp.scatter(perm, new, n)

    def bounded():  # the same choice: ties go to the smaller tie key in both
        keep = _top_k_by_ties(d, tie_keys, n_keep, k_max, xp)
        if g is None:
            return keep
        return keep + _top_k_by_ties(xp.where(keep > 0.5, minus_inf, g), tie_keys, n_grow,
                                     k_max, xp)

    def changed():  # the same choice, through the complement of the kept entries
        # Dropped: the smallest drop scores among active entries, ties to the larger tie
        # key, then to the higher index.
        scores = xp.where(active, xp.maximum(-d, lowest), minus_inf)
        dropped = _top_k_by_ties(scores, tie_keys, n_drop, k_change, xp,
                                 larger_keys_first=True)
        keep = xp.cast(active, xp.float32) - dropped
        if g is None:
            return keep
        return keep + _top_k_by_ties(xp.where(keep > 0.5, minus_inf, g), tie_keys, n_grow,
                                     k_change, xp)

    size = xp.static_size(active)
    n_keep, n_grow = xp.cast(n_keep, xp.int32), xp.cast(n_grow, xp.int32)
    n_drop = xp.sum(xp.cast(active, xp.int32)) - n_keep
    if k_change is not None and size is not None and k_change < size:
        fits = xp.logical_and(n_drop <= k_change, n_grow <= k_change)
        new = xp.cond(fits, changed, full)
    elif k_max is None or size is None or k_max >= size:
        new = full()
    else:
        fits = xp.logical_and(n_keep <= k_max, n_grow <= k_max)
        new = xp.cond(fits, bounded, full)
    return xp.reshape(new, shape)


def _rank_below(scores, k, xp=arrays.TF):
    """0/1 float32 [R, C]: ones at the ``k[r]`` largest ``scores`` of each row (ties to
    the lower column)."""
    order = xp.argsort_desc(scores, axis=-1)
    ranks = xp.argsort(order, axis=-1)
    return xp.cast(ranks < xp.cast(k, xp.int32)[:, None], xp.float32)


def select_per_unit(drop_scores, grow_scores, mask, n_keep, n_grow, tie_seed, xp=arrays.TF):
    """``select`` done separately for every output unit (last axis of ``mask``).

    ``n_keep`` and ``n_grow`` are int32 vectors with one count per unit; unit ``j`` of the
    result has exactly ``n_keep[j] + n_grow[j]`` ones among its inputs, so a constant
    fan-in mask stays constant fan-in (SRigL, Lasby et al. 2023). Ties are broken by one
    random permutation of the inputs drawn from ``tie_seed``.
    """
    shape = xp.shape(mask)
    units = shape[-1]
    rows = lambda t: xp.transpose(xp.reshape(xp.cast(t, xp.float32), [-1, units]))  # noqa: E731
    active = rows(mask) > 0.5
    fan_in = xp.shape(active)[1]
    perm = xp.argsort(xp.uniform_n(fan_in, tie_seed))
    active = xp.take(active, perm, axis=1)
    lowest = xp.lowest
    minus_inf = xp.asarray(-float("inf"), xp.float32)
    d = xp.take(rows(drop_scores), perm, axis=1)
    d = xp.where(active, xp.where(xp.isnan(d), lowest, d), minus_inf)
    keep = _rank_below(d, n_keep, xp)
    new = keep
    if grow_scores is not None:
        g = xp.take(rows(grow_scores), perm, axis=1)
        g = xp.where(xp.isnan(g), lowest, g)
        g = xp.where(keep > 0.5, minus_inf, g)
        new = keep + _rank_below(g, n_grow, xp)
    new = xp.take(new, xp.argsort(perm), axis=1)
    return xp.reshape(xp.transpose(new), shape)


class Updater:
    """Base class: drop the smallest |w| among active entries, grow by ``grow_scores``.

    Subclasses override ``grow_scores`` (and declare what it needs in ``needs_grad`` /
    ``needs_momentum``). ``updates = False`` marks an updater that never changes masks.
    The hooks compute with ``state.xp`` (``tf_lottery.dst.arrays``), so one rule serves
    every array library.
    """

    name = "base"
    updates = True
    needs_grad = GRAD_NEVER
    needs_momentum = False

    def __init__(self, structure: str = "unstructured"):
        """``structure="constant_fan_in"`` drops and grows per output unit (last axis of
        the weight), so each unit keeps its number of inputs; ``"unstructured"`` (default)
        counts over the whole weight."""
        if structure not in ("unstructured", "constant_fan_in"):
            raise ValueError(f"unknown structure {structure!r}; use 'unstructured' or "
                             "'constant_fan_in'")
        self.structure = structure

    def drop_scores(self, state: UnitState):
        """Larger is kept. Default: |w| (inactive entries are excluded by ``select``)."""
        return state.xp.abs(state.weight)

    def grow_scores(self, state: UnitState):
        """Larger is grown first; only entries not kept are candidates."""
        raise NotImplementedError

    def new_mask(self, state: UnitState, drop_fraction):
        """The mask after one update that drops and regrows ``drop_fraction`` of the active
        entries; the number of active entries is unchanged."""
        xp = state.xp
        if self.structure == "constant_fan_in" and len(state.mask.shape) >= 2:
            mask = xp.cast(state.mask, xp.float32)
            per_unit = xp.cast(xp.reshape(mask, [-1, xp.shape(mask)[-1]]) > 0.5, xp.int32)
            n_active = xp.sum(per_unit, axis=0)
            n_drop = drop_count(n_active, drop_fraction, xp)
            return select_per_unit(self.drop_scores(state), self.grow_scores(state), mask,
                                   n_active - n_drop, n_drop,
                                   xp.fold_in(state.seed, _SALT_TIES), xp)
        n_active = xp.sum(xp.cast(xp.cast(state.mask, xp.float32) > 0.5, xp.int32))
        n_drop = drop_count(n_active, drop_fraction, xp)
        return select(self.drop_scores(state), self.grow_scores(state), state.mask,
                      n_active - n_drop, n_drop, xp.fold_in(state.seed, _SALT_TIES), xp,
                      state.k_max, state.k_change)


class RigLUpdater(Updater):
    """RigL: grow where the dense gradient of the current batch is largest in magnitude."""

    name = "rigl"
    needs_grad = GRAD_AT_UPDATES

    def grow_scores(self, state: UnitState):
        return state.xp.abs(state.grad)


class SETUpdater(Updater):
    """SET: grow at random (stateless uniform scores seeded by unit and step)."""

    name = "set"

    def grow_scores(self, state: UnitState):
        xp = state.xp
        return xp.uniform(xp.shape(state.weight), xp.fold_in(state.seed, _SALT_GROW))


class SNFSUpdater(Updater):
    """SNFS: grow where the momentum (moving average) of the dense gradient is largest."""

    name = "snfs"
    needs_grad = GRAD_EVERY_STEP
    needs_momentum = True

    def grow_scores(self, state: UnitState):
        return state.xp.abs(state.momentum)


class StaticUpdater(Updater):
    """Static sparse training: the masks never change."""

    name = "static"
    updates = False

    def grow_scores(self, state: UnitState):
        return None

    def new_mask(self, state: UnitState, drop_fraction):
        return state.xp.cast(state.mask, state.xp.float32)


class MagnitudePruningUpdater(Updater):
    """Gradual magnitude pruning: keep the largest |w| among active entries, grow nothing.

    ``new_mask`` takes a target *sparsity* (fraction of zeros of the whole weight) instead
    of a drop fraction; a target below the current sparsity leaves the mask unchanged.
    """

    name = "magnitude_pruning"

    def grow_scores(self, state: UnitState):
        return None

    def new_mask(self, state: UnitState, target_sparsity):
        xp = state.xp
        mask = xp.cast(state.mask, xp.float32)
        size = xp.size(mask)
        n_active = xp.sum(xp.cast(mask > 0.5, xp.int32))
        # Zeros rounded half up, as tf_lottery.masking.selection.count_zeros.
        zeros = xp.cast(xp.floor(xp.cast(target_sparsity, xp.float32)
                                 * xp.cast(size, xp.float32) + 0.5), xp.int32)
        n_keep = xp.minimum(n_active, size - xp.minimum(zeros, size))
        return select(self.drop_scores(state), None, mask, n_keep, 0,
                      xp.fold_in(state.seed, _SALT_TIES), xp, state.k_max)
