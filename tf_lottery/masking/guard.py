"""Writes from outside tf-lottery to a masked weight or its mask are masked as they land.

A ``MaskedLayer`` trains on its raw weight variables and masks only their gradients, so
a training step costs one elementwise pass per masked weight. Nothing inside a step can
move a masked entry (zero gradient, zero optimizer state). What can is a write from
outside: ``kernel.assign``, ``set_weights``, ``load_weights``,
``tf.train.Checkpoint.restore``, a kernel constraint, EMA finalisation. ``watch`` hooks
those writes on one variable and calls the layer back after each, and the layer writes
``weight * mask`` at once.

Order: ``Model.set_weights``, h5 files and checkpoints write a weight and its mask one
after the other, in either order. When the weight comes first, the layer keeps the
written value (eager writes only, until the mask is written or the weight is written
again) so that entries the new mask switches on keep what was written.

The hooks are instance attributes of the variable: ``assign``, and the private
``_restore_from_tensors``, which every ``tf.train.Checkpoint`` restore calls (TensorFlow
has no public after-restore hook). Increments (``assign_add``, ``assign_sub``) are not
hooked: optimizers use them every step, where they move no masked entry; after an
increment from outside, predictions stay right (inference masks in the forward pass) and
the next tf-lottery call (``apply_masks``, a mask update) re-zeroes the raw variable.
"""
from tf_lottery._keras import tf

_HOOKED = ("assign", "_restore_from_tensors")
_PREFIX = "_tf_lottery_raw"


def innermost(variable):
    """The variable that stores ``variable``'s own values.

    tf_keras' ``AutoCastVariable`` (mixed precision) reads as float16 inside a layer's
    call and has no public accessor for the float32 variable it wraps, whose methods
    its own delegate to; that ``_variable`` is the one hooked and written.
    """
    return getattr(variable, "_variable", variable)


def can_write() -> bool:
    """False inside a replica of a multi-replica strategy, where a layer cannot write a
    mirrored variable (MaskedLayer masks in the forward pass there instead)."""
    context = tf.distribute.get_replica_context()
    return context is None or context.num_replicas_in_sync <= 1


def watch(variable, after_write) -> None:
    """Hooks ``variable``'s whole-value writes: each calls ``after_write()`` once done."""
    target = innermost(variable)
    if not hasattr(target, _PREFIX + "assign"):
        for name in _HOOKED:
            object.__setattr__(target, _PREFIX + name, getattr(target, name))
    for name in _HOOKED:
        original = getattr(target, _PREFIX + name)

        def hooked(*args, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            if can_write():
                after_write()
            return result
        object.__setattr__(target, name, hooked)


def raw_assign(variable, value) -> None:
    """``variable.assign(value)`` without the hook (tf-lottery's own writes)."""
    target = innermost(variable)
    getattr(target, _PREFIX + "assign", target.assign)(value)
