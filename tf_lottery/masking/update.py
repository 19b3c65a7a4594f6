"""In-graph mask assignment: the one place outside ``MaskedLayer`` that writes masks while
training (RigL, SET, SNFS updates and gradual magnitude pruning).

TensorFlow ops only (no numpy, no host round trip), so it runs inside a compiled train
step, on every replica of a ``tf.distribute`` strategy and under XLA / TPU. Under a
strategy it must be called where variable assignments reach the local copy: inside
``strategy.extended.update`` (cross-replica "update context"), or with no strategy.

Invariant kept: every masked entry of a weight is exactly 0, and so is every optimizer
slot entry (momentum, Adam moments, EMA copy) of a masked weight, so that no optimizer
can move a masked weight away from 0.
"""
from typing import Sequence

from tf_lottery._keras import tf


def assign_mask(weight: tf.Variable, mask: tf.Variable, new_mask,
                slots: Sequence[tf.Variable] = (), slot_fills: Sequence[float] = ()):
    """Sets ``mask`` to ``new_mask`` and keeps the invariant for the connections that change.

    - dropped connections (mask 1 -> 0): weight and slot entries become 0;
    - grown connections (mask 0 -> 1): weight and slot entries start at 0;
    - kept connections (1 -> 1, including one dropped and regrown in the same update):
      unchanged.

    Args:
      weight: the weight variable (a ``MaskedLayer.masked_weights`` pair's first item).
      mask: its mask variable (the pair's second item).
      new_mask: a 0/1 tensor shaped like ``mask`` (any float or bool dtype).
      slots: optimizer variables shaped like ``weight`` that belong to it (momentum,
        Adam's m and v, ...); they are reset wherever the weight is zeroed.
      slot_fills: the value each slot is reset to (default 0; e.g. Adagrad's initial
        accumulator value).

    Returns:
      ``(grown, dropped)``: int32 scalar tensors, the number of connections switched on
      and off (equal when the update keeps the count constant).
    """
    old = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    new = tf.cast(new_mask, tf.float32)
    new = tf.reshape(new, tf.shape(old))
    keep = old * new  # 1 where the connection existed before and still exists
    value = tf.convert_to_tensor(weight)
    weight.assign(value * tf.cast(keep, value.dtype))
    fills = list(slot_fills) + [0.0] * (len(slots) - len(slot_fills))
    for var, fill in zip(slots, fills):
        value = tf.convert_to_tensor(var)
        kept = tf.cast(keep, value.dtype)
        if fill:
            var.assign(value * kept + tf.cast(fill, value.dtype) * (1 - kept))
        else:
            var.assign(value * kept)
    mask.assign(tf.cast(new, mask.dtype))
    grown = tf.reduce_sum(tf.cast((new > 0.5) & (old < 0.5), tf.int32))
    dropped = tf.reduce_sum(tf.cast((old > 0.5) & (new < 0.5), tf.int32))
    return grown, dropped
