"""Drop-fraction schedules of dynamic sparse training: f(t), the share of active weights
that an update at step ``t`` drops (and regrows).

Pure functions of ``(step, alpha, end_step)``. They accept Python numbers, numpy arrays,
TensorFlow tensors or JAX arrays and return the same kind (a tensor step gives a float32
tensor; ``tf_lottery.dst.arrays``), so one definition serves the in-graph update on every
backend and host-side tests, logs and plots.

- ``cosine``:   f(t) = alpha / 2 * (1 + cos(pi * t / end_step))  (RigL's default)
- ``linear``:   f(t) = alpha * (1 - t / end_step)
- ``constant``: f(t) = alpha

``t`` is clipped to ``[0, end_step]``: the decaying schedules reach 0 at ``end_step``.
All three are gin-configurable (module ``tf_lottery.dst``), e.g. in a .gin file
``RigL.decay = @tf_lottery.dst.linear`` (or simply the string ``"linear"``).
"""
import math
from typing import Callable, Dict, Union

import gin
import numpy as np

from tf_lottery.dst import arrays

DECAYS = ("cosine", "linear", "constant")


def _progress(step, end_step):
    """t / end_step clipped to [0, 1], as float32 tensor or float64 numpy."""
    xp = arrays.namespace(step) or arrays.namespace(end_step)
    if xp is not None:
        t = xp.cast(step, xp.float32)
        end = xp.cast(end_step, xp.float32)
        return xp.clip(t / xp.maximum(end, 1.0), 0.0, 1.0)
    t = np.asarray(step, dtype=np.float64)
    end = max(float(end_step), 1.0)
    out = np.clip(t / end, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


@gin.configurable(module="tf_lottery.dst")
def cosine(step, alpha: float = 0.3, end_step: int = 1):
    """alpha / 2 * (1 + cos(pi * step / end_step)); alpha at 0, 0 at end_step."""
    p = _progress(step, end_step)
    xp = arrays.namespace(p)
    if xp is not None:
        return 0.5 * alpha * (1.0 + xp.cos(math.pi * p))
    out = 0.5 * alpha * (1.0 + np.cos(np.pi * np.asarray(p)))
    return float(out) if np.ndim(out) == 0 else out


@gin.configurable(module="tf_lottery.dst")
def linear(step, alpha: float = 0.3, end_step: int = 1):
    """alpha * (1 - step / end_step); alpha at 0, 0 at end_step."""
    p = _progress(step, end_step)
    if arrays.namespace(p) is not None:
        return alpha * (1.0 - p)
    out = alpha * (1.0 - np.asarray(p))
    return float(out) if np.ndim(out) == 0 else out


@gin.configurable(module="tf_lottery.dst")
def constant(step, alpha: float = 0.3, end_step: int = 1):
    """alpha at every step (end_step only bounds when updates happen)."""
    del end_step
    xp = arrays.namespace(step)
    if xp is not None:
        return xp.full(xp.shape(step), alpha)
    if np.ndim(step) == 0:
        return float(alpha)
    return np.full(np.shape(step), float(alpha))


def pruning_schedule(schedule, step, xp):
    """``(should_prune, sparsity)`` of a tfmot ``PolynomialDecay`` or ``ConstantSparsity``
    at ``step``, computed with array namespace ``xp`` (tfmot's own ``__call__`` needs
    TensorFlow tensors; this gives the same values on JAX arrays).

    should_prune: begin_step <= step <= end_step (or end_step == -1) and
    (step - begin_step) % frequency == 0; PolynomialDecay's sparsity:
    final + (initial - final) * (1 - p) ** power, p = clip((step - begin) / (end - begin), 0, 1).
    """
    config = schedule.get_config()["config"]
    begin, end, freq = config["begin_step"], config["end_step"], config["frequency"]
    in_range = step >= begin
    if end != -1:
        in_range = xp.logical_and(in_range, step <= end)
    should_prune = xp.logical_and(in_range, xp.equal(xp.mod(step - begin, freq), 0))
    if "target_sparsity" in config:
        return should_prune, xp.cast(xp.full(xp.shape(step), config["target_sparsity"]),
                                     xp.float32)
    if "final_sparsity" not in config:
        raise TypeError(f"{type(schedule).__name__} is not supported on this backend; use "
                        "tfmot.sparsity.keras.PolynomialDecay or ConstantSparsity")
    p = xp.clip(xp.cast(step - begin, xp.float32) / float(end - begin), 0.0, 1.0)
    initial, final = config["initial_sparsity"], config["final_sparsity"]
    sparsity = final + (initial - final) * xp.power(1.0 - p, float(config["power"]))
    return should_prune, xp.cast(sparsity, xp.float32)


_BY_NAME: Dict[str, Callable] = {"cosine": cosine, "linear": linear, "constant": constant}

Decay = Union[str, Callable]


def get(decay: Decay) -> Callable:
    """The schedule function for a name in ``DECAYS`` (or a callable, returned as is).

    A callable must have the signature ``f(step, alpha, end_step)`` and follow the
    conventions above (numbers in, numbers out; tensors in, float32 tensors out).
    """
    if callable(decay):
        return decay
    if isinstance(decay, str) and decay.lower() in _BY_NAME:
        return _BY_NAME[decay.lower()]
    raise ValueError(f"unknown drop-fraction decay {decay!r}; use one of {DECAYS} or a "
                     "callable f(step, alpha, end_step)")


def check_alpha(alpha) -> float:
    """``alpha`` as a float, or a ValueError unless 0 < alpha <= 1."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a number in (0, 1], got {alpha!r}") from None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"alpha (the initial drop fraction) must be in (0, 1], got {alpha!r}; "
                         "RigL uses 0.3")
    return value
