"""Writes one mask update of ``tf_lottery.keras3.SparseOptimizer`` into its state.

``new_masks()`` computes the new 0/1 masks of the units (``tf_lottery.dst.updaters``);
these functions write them with their consequences (dropped and grown weights and their
optimizer state exactly 0, ``tf_lottery.keras3.state``) and the update statistics:

- ``stateful`` (TensorFlow, PyTorch): the writes inside a conditional on the schedule,
  once for all replicas under ``tf.distribute`` (writing every replica's copy);
- ``functional`` (JAX, whose training step is stateless): one ``ops.cond`` over the state
  an update may change (weights, slots, the optimizer's mask copies, statistics), whose
  skip branch passes it through.

``is_update`` None: the caller runs this step exactly at an update step (no conditional;
``SparseOptimizer.traced_as("update")``).
"""
from keras import ops

from tf_lottery.keras3 import replicas, state

STATS = ("grown", "dropped", "active", "amount", "step", "updates")


def _counts(old, new):
    """(grown, dropped, active) int32 scalars of one mask change."""
    old, new = old > 0.5, new > 0.5
    grown = ops.sum(ops.cast(ops.logical_and(new, ops.logical_not(old)), "int32"))
    dropped = ops.sum(ops.cast(ops.logical_and(old, ops.logical_not(new)), "int32"))
    return grown, dropped, ops.sum(ops.cast(new, "int32"))


def _statistics(units, news, amount, step, updates):
    """The values of ``STATS`` after the update to ``news`` (per-unit counts stacked)."""
    counts = [_counts(ops.cast(u.live.value, "float32"), new) for u, new in zip(units, news)]
    stacked = [ops.stack([c[k] for c in counts]) for k in range(3)]
    return stacked + [amount, ops.cast(step, "int32"), updates + 1]


def stateful(units, stats, is_update, amount, step, new_masks) -> None:
    def update():
        news = new_masks()
        values = _statistics(units, news, amount, step, stats["updates"].value)
        for u, new in zip(units, news):
            state.assign_mask(u.weight, u.live, new, u.slots, u.fills)
        for name, value in zip(STATS, values):
            stats[name].assign(value)
        return ops.convert_to_tensor(True)

    if is_update is None:
        replicas.in_cross_replica(update)
    else:
        replicas.in_cross_replica(
            lambda: ops.cond(is_update, update, lambda: ops.convert_to_tensor(False)))


def functional(units, stats, is_update, amount, step, new_masks) -> None:
    def current():
        return ([u.weight.value for u in units], [[s.value for s in u.slots] for u in units],
                [u.live.value for u in units], [stats[k].value for k in STATS])

    def update():
        news = new_masks()
        values = _statistics(units, news, amount, step, stats["updates"].value)
        weights, slots, masks = [], [], []
        for u, new in zip(units, news):
            w, s, m = state.mask_change(u.weight.value, u.live.value, new,
                                        [v.value for v in u.slots], u.fills)
            weights.append(w)
            slots.append(s)
            masks.append(ops.cast(m, u.live.dtype))
        return weights, slots, masks, values

    if is_update is None:
        weights, slots, masks, values = update()
    else:
        weights, slots, masks, values = ops.cond(is_update, update, current)
    for u, w, s, m in zip(units, weights, slots, masks):
        u.weight.assign(w)
        for variable, value in zip(u.slots, s):
            variable.assign(value)
        u.live.assign(m)
    for name, value in zip(STATS, values):
        stats[name].assign(value)
