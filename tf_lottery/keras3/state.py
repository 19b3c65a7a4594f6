"""Optimizer state of masked weights for Keras 3 optimizers, and the mask write.

Every mask write must also reset the optimizer state (momentum, moments, accumulators,
EMA copies) of the entries it turns off or on, or an optimizer would move a masked
weight away from 0. Keras 3 optimizers create their per-weight state in ``build`` with
``add_variable_from_reference`` / ``add_optimizer_variables`` as lists indexed like the
trainable variables (``optimizer._get_variable_index(variable)``, the lookup every
built-in ``update_step`` uses); there is no public "slots of this variable" query, so
these lists are found among the optimizer's attributes, and any other per-weight state
raises a ValueError. keras.ops only: runs on every backend.
"""
from typing import List, Sequence, Tuple

import keras
from keras import ops

from tf_lottery.masking import state_plan


def unwrap(optimizer):
    """The optimizer that holds the per-weight state: the inner optimizer of a
    ``LossScaleOptimizer`` or of a ``tfl.keras3.SparseOptimizer`` (whose own variables are
    masks and statistics, not per-weight state)."""
    while (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
           or _is_sparse_optimizer(optimizer)):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _is_sparse_optimizer(optimizer) -> bool:
    from tf_lottery.keras3.dst import SparseOptimizer
    return isinstance(optimizer, SparseOptimizer)


def sparse_optimizers(model=None, optimizers=()) -> list:
    """The ``tfl.keras3.SparseOptimizer``s among ``optimizers`` (one, a list, or None) and
    ``model``'s compiled optimizer: the ones that carry their own copy of the masks."""
    given = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
    found = [getattr(model, "optimizer", None), *given]
    return [o for i, o in enumerate(found)
            if _is_sparse_optimizer(o) and all(o is not p for p in found[:i])]


def live_optimizers(model=None, optimizers=()) -> list:
    """``optimizers`` (one, a list, or None) and ``model``'s compiled optimizer, each once,
    loss scaling unwrapped; raises ValueError for a non-Keras-3 optimizer."""
    return state_plan.live_optimizers(model, optimizers, unwrap, _check_optimizer)


def _check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(f"optimizer {type(optimizer).__name__} is not a Keras 3 optimizer "
                         "(keras.optimizers.*), so tf-lottery cannot reset its per-weight "
                         "state when masks change")


def _slot_lists(optimizer):
    """``attribute name -> list of per-weight variables`` of a built optimizer."""
    n = len(optimizer._trainable_variables)
    lists = {}
    for name, value in vars(optimizer).items():
        if name in ("_variables", "_trainable_variables") or not isinstance(value, (list, tuple)):
            continue
        if n and len(value) == n and all(v is None or isinstance(v, keras.Variable)
                                         for v in value):
            lists[name] = value
    claimed = {id(v) for value in lists.values() for v in value if v is not None}
    strays = [v for v in optimizer.variables if id(v) not in claimed and len(v.shape) > 0]
    if strays:
        raise ValueError(
            f"optimizer {type(optimizer).__name__} keeps per-weight state that tf-lottery cannot "
            f"map to weights ({', '.join(v.path for v in strays[:3])}), so the state of masked "
            "entries cannot be reset; use SGD, Adam, AdamW, RMSprop, Nadam, Adamax, Adagrad, "
            "Adadelta, Lion or Ftrl")
    return lists


class SlotTable:
    """The per-weight state of built ``optimizers``, found once: ``of(variable)`` gives
    ``(state variables, reset values)`` of a weight without rescanning the optimizers'
    attributes (a mask write over many weights builds one table).

    EMA copies (``use_ema=True``) reset to 0, Adagrad's / Ftrl's accumulators to
    ``initial_accumulator_value``, everything else to 0.
    """

    def __init__(self, optimizers):
        self._entries = {}
        for optimizer in optimizers:
            if not optimizer.built:
                continue
            lists = _slot_lists(optimizer)
            fills = {name: state_plan.initial_value(optimizer, name) for name in lists}
            # the index every built-in update_step uses (optimizer._get_variable_index)
            for index, variable in enumerate(optimizer._trainable_variables):
                slots, values, bad = self._entries.setdefault(id(variable), ([], [], []))
                for name, per_weight in lists.items():
                    slot = per_weight[index]
                    if slot is None:
                        continue
                    if tuple(slot.shape) != tuple(variable.shape):
                        bad.append(
                            f"optimizer {type(optimizer).__name__} keeps state {name!r} of "
                            f"shape {tuple(slot.shape)} for weight {variable.path} of shape "
                            f"{tuple(variable.shape)}; it cannot be reset entry by entry")
                        continue
                    slots.append(slot)
                    values.append(fills[name])

    def of(self, variable) -> Tuple[List[keras.Variable], List[float]]:
        """``(state variables, reset values)`` of ``variable``; ValueError if some state of
        it is not shaped like it (a factored optimizer)."""
        slots, values, bad = self._entries.get(id(variable), ([], [], []))
        if bad:
            raise ValueError(bad[0])
        return list(slots), list(values)


def slots_of(optimizers, variable) -> Tuple[List[keras.Variable], List[float]]:
    """``(state variables, reset values)`` of ``variable`` in every built optimizer of
    ``optimizers`` (a list, or a ``SlotTable``) tracking it; see ``SlotTable``."""
    table = optimizers if isinstance(optimizers, SlotTable) else SlotTable(optimizers)
    return table.of(variable)


def mask_change(weight, old_mask, new_mask, slots: Sequence = (), fills: Sequence[float] = ()):
    """The values ``assign_mask`` writes, as a pure function of tensors: ``(weight, [slots],
    mask)`` after changing ``old_mask`` to ``new_mask`` (usable inside a functional
    ``ops.cond`` on JAX)."""
    old = ops.cast(old_mask, "float32")
    new = ops.reshape(ops.cast(new_mask, "float32"), ops.shape(old))
    keep = old * new
    weight = weight * ops.cast(keep, weight.dtype)
    out = []
    for slot, fill in zip(slots, list(fills) + [0.0] * (len(slots) - len(fills))):
        kept = ops.cast(keep, slot.dtype)
        out.append(slot * kept + ops.cast(fill, slot.dtype) * (1 - kept))
    return weight, out, new


def assign_mask(weight, mask, new_mask, slots: Sequence = (), fills: Sequence[float] = ()):
    """Sets ``mask`` to ``new_mask``; entries turned off or on become 0 in ``weight`` and get
    their reset value in each slot; entries kept on are unchanged."""
    value, slot_values, new = mask_change(weight.value, mask.value, new_mask,
                                          [s.value for s in slots], fills)
    weight.assign(value)
    for slot, slot_value in zip(slots, slot_values):
        slot.assign(slot_value)
    mask.assign(ops.cast(new, mask.dtype))


_EMA = "_model_variables_moving_average"  # where Keras 3 keeps use_ema copies


def reset_optimizer(optimizer, iteration: int = 0, variables=None) -> None:
    """Gives a Keras 3 ``optimizer`` the state a fresh one would have, at ``iteration``.

    Every per-weight slot gets its initial value (0, or Adagrad's / Ftrl's
    ``initial_accumulator_value``) and each EMA copy the current value of its weight (as
    ``build`` does), so call it once the weights are in place (after rewinding). The
    counterpart of ``tf_lottery.masking.state.reset_optimizer``; ``variables`` is accepted
    for the same signature (a Keras 3 optimizer knows its own weights).
    """
    del variables
    optimizer = unwrap(optimizer)
    _check_optimizer(optimizer)
    if optimizer.built:
        weights = optimizer._trainable_variables
        for name, slots in _slot_lists(optimizer).items():
            fill = state_plan.initial_value(optimizer, name)
            for weight, slot in zip(weights, slots):
                if slot is None:
                    continue
                if name == _EMA:
                    slot.assign(ops.cast(weight.value, slot.dtype))
                else:
                    slot.assign(ops.full(slot.shape, fill, dtype=slot.dtype))
    optimizer.iterations.assign(iteration)
