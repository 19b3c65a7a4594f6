"""Optimizer state that belongs to masked weights: finding it, resetting it.

Every mask write (``MaskedLayer.set_masks``, IMP pruning, rewinding, RigL/SET/SNFS/GMP
updates) must also reset the optimizer state of the entries it turns off or on
(momentum, Adam moments, EMA copies), or an optimizer would move a masked weight away
from 0. This module maps a weight variable to that state for tf_keras optimizers.
"""
from tf_lottery._keras import keras, tf

__all__ = ["build_optimizer", "optimizer_slots"]


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


def _new_optimizer_slots(optimizer, variables):
    index = optimizer._index_dict
    n = len(index)
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
    fills = {name: 0.0 for name in lists}
    if isinstance(optimizer, (keras.optimizers.Adagrad, keras.optimizers.Ftrl)):
        fills["_accumulators"] = float(optimizer.initial_accumulator_value)
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
    fill = {}
    if isinstance(optimizer, (keras.optimizers.legacy.Adagrad, keras.optimizers.legacy.Ftrl)):
        fill["accumulator"] = float(getattr(optimizer, "_initial_accumulator_value", 0.0))
    out = {}
    for var in variables:
        slots, values = [], []
        for name in names:
            slot = optimizer.get_slot(var, name)
            if tuple(slot.shape) != tuple(var.shape):
                raise ValueError(f"optimizer slot {name!r} of {var.name} has shape "
                                 f"{tuple(slot.shape)}, not the weight's; cannot reset it")
            slots.append(slot)
            values.append(fill.get(name, 0.0))
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
