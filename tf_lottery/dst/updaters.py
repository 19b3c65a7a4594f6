"""The drop/grow rules of dynamic sparse training, as TensorFlow tensor functions.

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

Everything here is pure tensor math (no variables, no numpy), usable inside a compiled
train step on any device; ``tf_lottery.masking.update.assign_mask`` writes the result.
"""
from typing import NamedTuple, Optional

from tf_lottery._keras import tf

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
      seed: int64 tensor of shape [2], the stateless seed of this unit at this step.
    """
    weight: tf.Tensor
    mask: tf.Tensor
    grad: Optional[tf.Tensor] = None
    momentum: Optional[tf.Tensor] = None
    seed: Optional[tf.Tensor] = None


def unit_seed(seed: int, unit_index: int, step) -> tf.Tensor:
    """The stateless seed of one unit at one step: a function of (seed, unit, step) only."""
    base = tf.constant([int(seed), 0x5EED], dtype=tf.int64)
    with_unit = tf.random.experimental.stateless_fold_in(base, int(unit_index))
    return tf.random.experimental.stateless_fold_in(with_unit, tf.cast(step, tf.int64))


def _fold(seed, salt: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, salt)


def top_k_mask(scores, k):
    """0/1 float32 vector with exactly ``k`` ones at the largest ``scores`` (1-D).

    Ties go to the lower index. Sorts the whole vector (static shapes: XLA/TPU-safe;
    ``k`` may be a tensor).
    """
    n = tf.size(scores)
    order = tf.argsort(scores, direction="DESCENDING", stable=True)
    ones = tf.cast(tf.range(n) < tf.cast(k, tf.int32), tf.float32)
    return tf.scatter_nd(order[:, None], ones, tf.reshape(n, [1]))


def drop_count(n_active, fraction):
    """floor(n_active * fraction) as int32 (the RigL reference rounds down)."""
    n = tf.cast(n_active, tf.float32) * tf.cast(fraction, tf.float32)
    return tf.cast(tf.floor(n), tf.int32)


def select(drop_scores, grow_scores, mask, n_keep, n_grow, tie_seed):
    """The new 0/1 mask (float32, shaped like ``mask``).

    Keeps the ``n_keep`` active entries with the largest ``drop_scores`` and switches on
    the ``n_grow`` entries with the largest ``grow_scores`` among those not kept. Ties are
    broken by a random permutation drawn from ``tie_seed``.

    Requires ``n_keep <= active`` and ``n_grow <= size - n_keep`` (the caller's counts
    guarantee both); then the result has exactly ``n_keep + n_grow`` ones.
    """
    shape = tf.shape(mask)
    active = tf.reshape(tf.cast(mask, tf.float32), [-1]) > 0.5
    n = tf.size(active)
    perm = tf.argsort(tf.random.stateless_uniform(tf.reshape(n, [1]), tie_seed), stable=True)
    lowest = tf.float32.min
    minus_inf = tf.constant(-float("inf"), tf.float32)
    # Inactive entries can never be kept: their drop score is below every active one.
    d = tf.reshape(tf.cast(drop_scores, tf.float32), [-1])
    d = tf.where(active, tf.where(tf.math.is_nan(d), lowest, d), minus_inf)
    keep = top_k_mask(tf.gather(d, perm), n_keep)
    if grow_scores is None:
        new = keep
    else:
        g = tf.reshape(tf.cast(grow_scores, tf.float32), [-1])
        g = tf.where(tf.math.is_nan(g), lowest, g)
        g = tf.gather(g, perm)
        # Kept entries rank below every candidate (-inf < lowest finite float).
        g = tf.where(keep > 0.5, minus_inf, g)
        new = keep + top_k_mask(g, n_grow)
    new = tf.scatter_nd(perm[:, None], new, tf.reshape(n, [1]))
    return tf.reshape(new, shape)


def _rank_below(scores, k):
    """0/1 float32 [R, C]: ones at the ``k[r]`` largest ``scores`` of each row (ties to
    the lower column)."""
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
    ranks = tf.argsort(order, axis=-1, stable=True)
    return tf.cast(ranks < tf.cast(k, tf.int32)[:, None], tf.float32)


def select_per_unit(drop_scores, grow_scores, mask, n_keep, n_grow, tie_seed):
    """``select`` done separately for every output unit (last axis of ``mask``).

    ``n_keep`` and ``n_grow`` are int32 vectors with one count per unit; unit ``j`` of the
    result has exactly ``n_keep[j] + n_grow[j]`` ones among its inputs, so a constant
    fan-in mask stays constant fan-in (SRigL, Lasby et al. 2023). Ties are broken by one
    random permutation of the inputs drawn from ``tie_seed``.
    """
    shape = tf.shape(mask)
    units = shape[-1]
    rows = lambda t: tf.transpose(tf.reshape(tf.cast(t, tf.float32), [-1, units]))  # noqa: E731
    active = rows(mask) > 0.5
    fan_in = tf.shape(active)[1]
    perm = tf.argsort(tf.random.stateless_uniform(tf.reshape(fan_in, [1]), tie_seed),
                      stable=True)
    active = tf.gather(active, perm, axis=1)
    lowest = tf.float32.min
    minus_inf = tf.constant(-float("inf"), tf.float32)
    d = tf.gather(rows(drop_scores), perm, axis=1)
    d = tf.where(active, tf.where(tf.math.is_nan(d), lowest, d), minus_inf)
    keep = _rank_below(d, n_keep)
    new = keep
    if grow_scores is not None:
        g = tf.gather(rows(grow_scores), perm, axis=1)
        g = tf.where(tf.math.is_nan(g), lowest, g)
        g = tf.where(keep > 0.5, minus_inf, g)
        new = keep + _rank_below(g, n_grow)
    new = tf.gather(new, tf.argsort(perm, stable=True), axis=1)
    return tf.reshape(tf.transpose(new), shape)


class Updater:
    """Base class: drop the smallest |w| among active entries, grow by ``grow_scores``.

    Subclasses override ``grow_scores`` (and declare what it needs in ``needs_grad`` /
    ``needs_momentum``). ``updates = False`` marks an updater that never changes masks.
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
        return tf.abs(state.weight)

    def grow_scores(self, state: UnitState):
        """Larger is grown first; only entries not kept are candidates."""
        raise NotImplementedError

    def new_mask(self, state: UnitState, drop_fraction):
        """The mask after one update that drops and regrows ``drop_fraction`` of the active
        entries; the number of active entries is unchanged."""
        if self.structure == "constant_fan_in" and len(state.mask.shape) >= 2:
            mask = tf.cast(state.mask, tf.float32)
            per_unit = tf.cast(tf.reshape(mask, [-1, tf.shape(mask)[-1]]) > 0.5, tf.int32)
            n_active = tf.reduce_sum(per_unit, axis=0)
            n_drop = drop_count(n_active, drop_fraction)
            return select_per_unit(self.drop_scores(state), self.grow_scores(state), mask,
                                   n_active - n_drop, n_drop, _fold(state.seed, _SALT_TIES))
        n_active = tf.reduce_sum(tf.cast(tf.cast(state.mask, tf.float32) > 0.5, tf.int32))
        n_drop = drop_count(n_active, drop_fraction)
        return select(self.drop_scores(state), self.grow_scores(state), state.mask,
                      n_active - n_drop, n_drop, _fold(state.seed, _SALT_TIES))


class RigLUpdater(Updater):
    """RigL: grow where the dense gradient of the current batch is largest in magnitude."""

    name = "rigl"
    needs_grad = GRAD_AT_UPDATES

    def grow_scores(self, state: UnitState):
        return tf.abs(state.grad)


class SETUpdater(Updater):
    """SET: grow at random (stateless uniform scores seeded by unit and step)."""

    name = "set"

    def grow_scores(self, state: UnitState):
        return tf.random.stateless_uniform(tf.shape(state.weight), _fold(state.seed, _SALT_GROW))


class SNFSUpdater(Updater):
    """SNFS: grow where the momentum (moving average) of the dense gradient is largest."""

    name = "snfs"
    needs_grad = GRAD_EVERY_STEP
    needs_momentum = True

    def grow_scores(self, state: UnitState):
        return tf.abs(state.momentum)


class StaticUpdater(Updater):
    """Static sparse training: the masks never change."""

    name = "static"
    updates = False

    def grow_scores(self, state: UnitState):
        return None

    def new_mask(self, state: UnitState, drop_fraction):
        return tf.cast(state.mask, tf.float32)


class MagnitudePruningUpdater(Updater):
    """Gradual magnitude pruning: keep the largest |w| among active entries, grow nothing.

    ``new_mask`` takes a target *sparsity* (fraction of zeros of the whole weight) instead
    of a drop fraction; a target below the current sparsity leaves the mask unchanged.
    """

    name = "magnitude_pruning"

    def grow_scores(self, state: UnitState):
        return None

    def new_mask(self, state: UnitState, target_sparsity):
        mask = tf.cast(state.mask, tf.float32)
        size = tf.size(mask)
        n_active = tf.reduce_sum(tf.cast(mask > 0.5, tf.int32))
        # Zeros rounded half up, as tf_lottery.masking.selection.count_zeros.
        zeros = tf.cast(tf.floor(tf.cast(target_sparsity, tf.float32)
                                 * tf.cast(size, tf.float32) + 0.5), tf.int32)
        n_keep = tf.minimum(n_active, size - tf.minimum(zeros, size))
        return select(self.drop_scores(state), None, mask, n_keep, 0,
                      _fold(state.seed, _SALT_TIES))
