"""Drop-fraction schedules of dynamic sparse training: f(t), the share of active weights
that an update at step ``t`` drops (and regrows).

Pure functions of ``(step, alpha, end_step)``. They accept Python numbers, numpy arrays
or TensorFlow tensors and return the same kind (a tensor step gives a float32 tensor),
so one definition serves the in-graph update and host-side tests, logs and plots.

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

from tf_lottery._keras import tf

DECAYS = ("cosine", "linear", "constant")


def _is_tf(x) -> bool:
    return isinstance(x, (tf.Tensor, tf.Variable)) or tf.is_tensor(x)


def _progress(step, end_step):
    """t / end_step clipped to [0, 1], as float32 tensor or float64 numpy."""
    if _is_tf(step) or _is_tf(end_step):
        t = tf.cast(step, tf.float32)
        end = tf.cast(end_step, tf.float32)
        return tf.clip_by_value(t / tf.maximum(end, 1.0), 0.0, 1.0)
    t = np.asarray(step, dtype=np.float64)
    end = max(float(end_step), 1.0)
    out = np.clip(t / end, 0.0, 1.0)
    return float(out) if out.ndim == 0 else out


@gin.configurable(module="tf_lottery.dst")
def cosine(step, alpha: float = 0.3, end_step: int = 1):
    """alpha / 2 * (1 + cos(pi * step / end_step)); alpha at 0, 0 at end_step."""
    p = _progress(step, end_step)
    if _is_tf(p):
        return 0.5 * alpha * (1.0 + tf.cos(math.pi * p))
    out = 0.5 * alpha * (1.0 + np.cos(np.pi * np.asarray(p)))
    return float(out) if np.ndim(out) == 0 else out


@gin.configurable(module="tf_lottery.dst")
def linear(step, alpha: float = 0.3, end_step: int = 1):
    """alpha * (1 - step / end_step); alpha at 0, 0 at end_step."""
    p = _progress(step, end_step)
    if _is_tf(p):
        return alpha * (1.0 - p)
    out = alpha * (1.0 - np.asarray(p))
    return float(out) if np.ndim(out) == 0 else out


@gin.configurable(module="tf_lottery.dst")
def constant(step, alpha: float = 0.3, end_step: int = 1):
    """alpha at every step (end_step only bounds when updates happen)."""
    del end_step
    if _is_tf(step):
        return tf.fill(tf.shape(step), tf.constant(alpha, tf.float32))
    if np.ndim(step) == 0:
        return float(alpha)
    return np.full(np.shape(step), float(alpha))


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
