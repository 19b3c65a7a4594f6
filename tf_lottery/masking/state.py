"""Optimizer state that belongs to masked weights: finding it, resetting it.

Every mask write (``MaskedLayer.set_masks``, IMP pruning, rewinding, RigL/SET/SNFS/GMP
updates) must also reset the optimizer state of the entries it turns off or on
(momentum, Adam moments, EMA copies), or an optimizer would move a masked weight away
from 0. This module maps a weight variable to that state for tf_keras optimizers.
"""
from tf_lottery._keras import keras, tf
from tf_lottery.masking import state_plan

__all__ = ["build_optimizer", "live_optimizers", "optimizer_slots", "reset_optimizer",
           "slots_of"]


def _is_legacy(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.legacy.Optimizer)


def _is_new(optimizer) -> bool:
    return isinstance(optimizer, keras.optimizers.Optimizer) and not _is_legacy(optimizer)


def _check_optimizer_type(optimizer):
    if optimizer is None:
        raise ValueError("the model is not compiled: call model.compile(optimizer, loss) "
                         "before fit with a dynamic sparse training callback")
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        raise ValueError("LossScaleOptimizer (mixed precision) is not supported by the dynamic "
                         "sparse training callbacks yet; train in float32")
    if not (_is_new(optimizer) or _is_legacy(optimizer)):
        raise ValueError(f"optimizer {type(optimizer).__name__} is not a tf_keras optimizer "
                         "(keras.optimizers.* or keras.optimizers.legacy.*); cannot reset "
                         "its slots")


def build_optimizer(model) -> None:
    """Creates the optimizer's per-weight state (slots) now, under the model's strategy."""
    optimizer = model.optimizer
    _check_optimizer_type(optimizer)
    with model.distribute_strategy.scope():
        if _is_new(optimizer):
            optimizer.build(model.trainable_variables)
        else:
            optimizer._create_all_weights(model.trainable_variables)


def _slot_lists(optimizer):
    """``name -> list of slot variables`` of a built tf_keras 2.11+ optimizer, and
    ``name -> reset value``; each list is indexed like ``optimizer._index_dict``."""
    # tf_keras 2.11+ optimizers have no public slot map (no get_slot_names / get_slot):
    # their per-weight state is lists of variables indexed by _index_dict[_var_key(var)].
    n = len(optimizer._index_dict)
    lists = {}
    for name, value in vars(optimizer).items():
        if name == "_variables" or not isinstance(value, (list, tuple)) or len(value) != n:
            continue
        if n and all(isinstance(v, tf.Variable) for v in value):
            lists[name] = value
    claimed = {id(v) for value in lists.values() for v in value}
    strays = [v for v in optimizer.variables
              if id(v) not in claimed and v.shape.rank is not None and v.shape.rank > 0]
    if strays:
        raise ValueError(
            f"optimizer {type(optimizer).__name__} keeps per-weight state that tf-lottery "
            f"cannot map to weights ({', '.join(v.name for v in strays[:3])}...), so the slots "
            "of grown and dropped weights cannot be reset; use SGD, Adam, AdamW, RMSprop, "
            "Nadam, Adamax, Adagrad, Adadelta, Lion or Ftrl")
    return lists, {name: state_plan.initial_value(optimizer, name) for name in lists}


def _new_optimizer_slots(optimizer, variables):
    index = optimizer._index_dict
    lists, fills = _slot_lists(optimizer)
    out = {}
    for var in variables:
        key = optimizer._var_key(var)
        if key not in index:
            raise ValueError(f"optimizer does not track weight {var.name}")
        i = index[key]
        slots, values = [], []
        for name, value in lists.items():
            slot = value[i]
            if tuple(slot.shape) != tuple(var.shape):
                raise ValueError(
                    f"optimizer {type(optimizer).__name__} keeps state {name!r} of shape "
                    f"{tuple(slot.shape)} for weight {var.name} of shape {tuple(var.shape)} "
                    "(e.g. Adafactor's factored moments); slots of grown and dropped weights "
                    "cannot be reset entry by entry. Use SGD, Adam, AdamW, RMSprop, ...")
            slots.append(slot)
            values.append(fills[name])
        out[id(var)] = (slots, values)
    return out


def _legacy_optimizer_slots(optimizer, variables):
    names = list(optimizer.get_slot_names())
    out = {}
    for var in variables:
        slots, values = [], []
        for name in names:
            slot = optimizer.get_slot(var, name)
            if tuple(slot.shape) != tuple(var.shape):
                raise ValueError(f"optimizer slot {name!r} of {var.name} has shape "
                                 f"{tuple(slot.shape)}, not the weight's; cannot reset it")
            slots.append(slot)
            values.append(state_plan.initial_value(optimizer, name))
        out[id(var)] = (slots, values)
    return out


def optimizer_slots(optimizer, variables):
    """``id(variable) -> (slot variables, reset values)`` for a built tf_keras optimizer.

    tf_keras 2.11+ optimizers have no ``get_slot_names()``: their slots are lists of
    variables indexed by ``optimizer._index_dict[optimizer._var_key(variable)]`` (SGD's
    ``momentums``, Adam's ``_momentums`` / ``_velocities``, the EMA copies, ...). Every
    such list is collected; an optimizer holding other non-scalar state, or state not
    shaped like the weight, raises ValueError. Legacy optimizers use ``get_slot``.
    """
    _check_optimizer_type(optimizer)
    if _is_new(optimizer):
        return _new_optimizer_slots(optimizer, variables)
    return _legacy_optimizer_slots(optimizer, variables)


def _unwrap(optimizer):
    """The optimizer that holds the slots (a ``LossScaleOptimizer``'s inner optimizer)."""
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    return optimizer


def _tracks(optimizer, variable) -> bool:
    """Whether ``optimizer`` already holds state for ``variable`` (built and tracking it)."""
    if _is_new(optimizer):
        # no public "is this weight tracked" query on tf_keras 2.11+ optimizers
        return bool(getattr(optimizer, "_built", False)) and \
            optimizer._var_key(variable) in optimizer._index_dict
    if _is_legacy(optimizer):
        names = optimizer.get_slot_names()
        if not names:
            return False
        try:
            optimizer.get_slot(variable, names[0])
        except KeyError:
            return False
        return True
    return False


def live_optimizers(model=None, optimizers=()) -> list:
    """The optimizers whose state belongs to ``model``'s weights: ``optimizers`` (one, a
    list, or None) and the model's compiled optimizer; loss scaling unwrapped; each once."""
    return state_plan.live_optimizers(model, optimizers, _unwrap, _check_tf_keras)


def _check_tf_keras(optimizer) -> None:
    if not (_is_new(optimizer) or _is_legacy(optimizer)):
        raise ValueError(
            f"optimizer {type(optimizer).__name__} is not a tf_keras optimizer, so "
            "tf-lottery cannot reset its per-weight state when masks change; use "
            "keras.optimizers.* (tf_keras)")


def slots_of(optimizers, variable):
    """``(slot variables, reset values)`` of ``variable`` in every optimizer tracking it."""
    slots, fills = [], []
    for optimizer in optimizers:
        if _tracks(optimizer, variable):
            found, values = optimizer_slots(optimizer, [variable])[id(variable)]
            slots.extend(found)
            fills.extend(values)
    return slots, fills


def _ema_copies(optimizer) -> set:
    """ids of the EMA copies of a ``use_ema=True`` optimizer."""
    if _is_new(optimizer) and getattr(optimizer, "use_ema", False):
        # no public accessor: tf_keras keeps them in this list, indexed like the slots
        return {id(v) for v in getattr(optimizer, "_model_variables_moving_average", [])}
    return set()


def reset_optimizer(optimizer, iteration: int = 0, variables=None) -> None:
    """Gives ``optimizer`` the state a fresh one would have, at iteration ``iteration``.

    Every slot gets its real initial value (0, or Adagrad's / Ftrl's
    ``initial_accumulator_value``), and each EMA copy the current value of its weight
    (as ``build`` does), so call it once the weights are in place (after rewinding).

    Args:
      optimizer: a tf_keras optimizer (loss scaling is unwrapped).
      iteration: the value of ``optimizer.iterations`` afterwards.
      variables: the weights (e.g. ``model.trainable_variables``). Without them, EMA copies
        cannot be matched to their weights and are left as they are; slots are reset.
    """
    optimizer = _unwrap(optimizer)
    ema = _ema_copies(optimizer)
    done = set()
    for variable in variables or ():
        if not _tracks(optimizer, variable):
            continue
        slots, fills = optimizer_slots(optimizer, [variable])[id(variable)]
        for slot, fill in zip(slots, fills):
            value = variable if id(slot) in ema else tf.fill(tf.shape(slot), fill)
            slot.assign(tf.cast(tf.convert_to_tensor(value), slot.dtype))
            done.add(id(slot))
    if _is_new(optimizer) and getattr(optimizer, "_built", False):
        lists, fills = _slot_lists(optimizer)
        for name, slots in lists.items():
            for slot in slots:
                if id(slot) not in done and id(slot) not in ema:
                    slot.assign(tf.fill(tf.shape(slot), tf.cast(fills[name], slot.dtype)))
    elif _is_legacy(optimizer):
        for variable in optimizer.variables():
            name = variable.name.split(":")[0].split("/")[-1]
            if id(variable) not in done and variable is not optimizer.iterations:
                fill = state_plan.initial_value(optimizer, name)
                variable.assign(tf.fill(tf.shape(variable), tf.cast(fill, variable.dtype)))
    optimizer.iterations.assign(iteration)
