"""Keras-free rules of optimizer state shared by ``tf_lottery.masking.state`` (tf_keras)
and ``tf_lottery.keras3.state`` (Keras 3): which optimizers a mask write must reach, and
the value a per-weight state variable starts at. The Keras-specific parts (finding the
state variables of a weight) stay in those two modules.
"""
from typing import Callable

# state attribute (new optimizers) or slot name (tf_keras legacy) -> optimizer attribute
# holding its initial value: Adagrad's and Ftrl's accumulators; all other state starts at 0.
INITIAL_VALUE_ATTR = {"_accumulators": "initial_accumulator_value",
                      "accumulator": "_initial_accumulator_value"}


def initial_value(optimizer, name: str) -> float:
    """The value state ``name`` (attribute or slot name) of ``optimizer`` starts at."""
    attr = INITIAL_VALUE_ATTR.get(name)
    if attr is not None and hasattr(optimizer, attr):
        return float(getattr(optimizer, attr))
    return 0.0


def live_optimizers(model, optimizers, unwrap: Callable, check: Callable) -> list:
    """``optimizers`` (one, a list, or None) and ``model``'s compiled optimizer, each passed
    through ``unwrap`` (loss scaling) and ``check`` (raises for a foreign type), each once."""
    if optimizers is None:
        optimizers = ()
    elif not isinstance(optimizers, (list, tuple)):
        optimizers = (optimizers,)
    out, seen = [], set()
    for optimizer in list(optimizers) + [getattr(model, "optimizer", None)]:
        if optimizer is None:
            continue
        optimizer = unwrap(optimizer)
        check(optimizer)
        if id(optimizer) not in seen:
            seen.add(id(optimizer))
            out.append(optimizer)
    return out
