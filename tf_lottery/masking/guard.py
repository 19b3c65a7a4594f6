"""Writes from outside tf-lottery to a masked weight or its mask are masked as they land.

A masked layer trains on its raw weight variables and masks only their gradients, so a
training step costs one elementwise pass per masked weight. Nothing inside a step can
move a masked entry (zero gradient, zero optimizer state). What can is a write from
outside: ``kernel.assign``, ``set_weights``, ``load_weights``, a checkpoint restore, a
kernel constraint, EMA finalisation. ``WriteGuard`` hooks those writes on each weight and
mask of one layer and writes ``weight * mask`` as soon as one lands.

Order: ``Model.set_weights``, weight files and checkpoints write a weight and its mask
one after the other, in either order. When the weight comes first, the guard keeps the
written value (eager writes only, until the mask is written or the weight is written
again, and only while the weight is unchanged) so that entries the new mask switches on
keep what was written.

The hooks are instance attributes of the variable: ``assign``, and where the variable
has it the private ``_restore_from_tensors``, which every ``tf.train.Checkpoint``
restore calls (TensorFlow has no public after-restore hook). Increments are not hooked:
optimizers use them every step, where they move no masked entry (Keras 3 implements
``assign_add``/``assign_sub`` with ``assign``; the guard routes them past the hook).
After an increment from outside, predictions stay right (inference masks in the forward
pass) and the next tf-lottery call re-zeroes the raw variable.

No Keras or TensorFlow import: each Keras flavour passes its array operations (``io``).
"""
import functools

_PREFIX = "_tf_lottery_raw"


class ArrayIO:
    """What the guard needs from one Keras flavour; subclasses implement every method."""

    #: whether the variables' ``assign_add``/``assign_sub`` call ``assign`` (Keras 3)
    increments_assign = False

    def target(self, variable):
        """The variable object whose writes are hooked (e.g. under an autocast wrapper)."""
        return variable

    def read(self, variable):
        raise NotImplementedError

    def masked(self, value, mask):
        """``value * mask`` (mask a variable, cast to the value's dtype)."""
        raise NotImplementedError

    def concrete(self, value) -> bool:
        """Whether ``value`` is an eager value (not a symbolic one inside a traced step)."""
        raise NotImplementedError

    def equal(self, a, b) -> bool:
        raise NotImplementedError

    def copy(self, value):
        """A copy of ``value`` in its own buffer."""
        raise NotImplementedError

    def can_write(self) -> bool:
        """False where a hook must not write (a replica of a multi-replica strategy)."""
        return True

    def ready(self, weight, mask) -> bool:
        """Whether both variables hold values the guard may read and write now."""
        return True


def raw_assign(variable, value):
    """``variable.assign(value)`` without the hook (tf-lottery's own writes)."""
    return getattr(variable, _PREFIX + "assign", variable.assign)(value)


def _hook(variable, after_write, io) -> None:
    """Hooks ``variable``'s whole-value writes: each calls ``after_write()`` once done."""
    names = [n for n in ("assign", "_restore_from_tensors") if hasattr(variable, n)]
    if not hasattr(variable, _PREFIX + "assign"):
        for name in names:
            object.__setattr__(variable, _PREFIX + name, getattr(variable, name))
    for name in names:
        original = getattr(variable, _PREFIX + name)

        def hooked(*args, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            if io.can_write():
                after_write()
            return result
        object.__setattr__(variable, name, hooked)
    if getattr(variable, "assign_add", None) is not None and io.increments_assign:
        def assign_add(value, *args, **kwargs):
            return raw_assign(variable, variable + value)

        def assign_sub(value, *args, **kwargs):
            return raw_assign(variable, variable - value)
        object.__setattr__(variable, "assign_add", assign_add)
        object.__setattr__(variable, "assign_sub", assign_sub)


class WriteGuard:
    """Masks every outside write to a layer's ``(weight, mask)`` pairs as it lands."""

    def __init__(self, pairs, io: ArrayIO):
        self.pairs = list(pairs)
        self.own = list(self.pairs)
        self.io = io
        self._written = [None] * len(self.pairs)
        for index, (weight, mask) in enumerate(self.pairs):
            _hook(io.target(weight), functools.partial(self._after_weight_write, index), io)
            _hook(io.target(mask), functools.partial(self._after_own_mask_write, index), io)

    def follow(self, copies=None) -> None:
        """Masks outside writes by ``copies`` (one variable per pair, e.g. a
        sparse-training optimizer's own copies of the masks on JAX) instead of the layer's
        masks, which then lag and whose writes then mask nothing. A copy written from
        eager code (a JAX trainer writing its state back, in the order weights, layer
        masks, optimizer variables) masks its weight as a mask write does and is written
        into the layer's mask. ``None``: the layer's masks again."""
        if copies is None:
            self.pairs = list(self.own)
            return
        self.pairs = [(weight, copy) for (weight, _), copy in zip(self.own, copies)]
        for index, ((_, mask), copy) in enumerate(zip(self.own, copies)):
            if copy is not mask:
                _hook(self.io.target(copy),
                      functools.partial(self._after_copy_write, index, copy), self.io)

    def _after_own_mask_write(self, index: int) -> None:
        if self.pairs[index][1] is self.own[index][1]:  # (else the copy rules)
            self._after_mask_write(index)

    def _after_copy_write(self, index: int, copy) -> None:
        weight, current = self.pairs[index]
        if current is not copy or not self.io.ready(weight, copy):
            return
        self._after_mask_write(index)
        value = self.io.read(copy)
        if self.io.concrete(value):
            raw_assign(self.io.target(self.own[index][1]), self.io.copy(value))

    def _after_weight_write(self, index: int) -> None:
        weight, mask = self.pairs[index]
        self._written[index] = None
        if not self.io.ready(weight, mask):
            return
        written = self.io.read(weight)
        masked = self.io.masked(written, mask)
        if self.io.concrete(written) and not self.io.equal(written, masked):
            # for a mask written next; a copy: a read may be the live variable (Keras 3
            # on TensorFlow and PyTorch), which the write below overwrites
            self._written[index] = (self.io.copy(written), masked)
        raw_assign(self.io.target(weight), masked)

    def _after_mask_write(self, index: int) -> None:
        weight, mask = self.pairs[index]
        written, self._written[index] = self._written[index], None
        if not self.io.ready(weight, mask):
            return
        current = self.io.read(weight)
        if (written is not None and self.io.concrete(current)
                and self.io.equal(current, written[1])):
            current = written[0]
        raw_assign(self.io.target(weight), self.io.masked(current, mask))

    def write_masked(self) -> None:
        """Writes ``weight * mask`` into every weight (tf-lottery's own re-zeroing)."""
        for index, (weight, mask) in enumerate(self.pairs):
            raw_assign(self.io.target(weight), self.io.masked(self.io.read(weight), mask))
            self._written[index] = None
