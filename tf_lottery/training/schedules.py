"""Learning-rate schedules of the papers, as serialisable Keras schedules.

Schedules are functions of the optimizer's iteration count (steps, not epochs),
computed with TF ops only, so they run inside ``tf.function``, under
``tf.distribute`` strategies and on TPU.
"""
from typing import Optional, Sequence

import gin

from tf_lottery._keras import keras, tf


@gin.configurable
@keras.utils.register_keras_serializable(package="tf_lottery")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0, then step decay at absolute iteration boundaries.

    ``lr(step) = base_lr * min(1, step / warmup_steps) * decay_factor ** n(step)`` with
    ``n(step)`` the number of boundaries ``<= step``. So the rate rises linearly from 0
    at step 0 to ``base_lr`` at ``warmup_steps`` (Frankle & Carbin 2019: "linear warmup
    from 0 over k iterations"; no warmup when ``warmup_steps`` is 0) and is multiplied
    by ``decay_factor`` from each boundary on. A boundary inside the warmup scales the
    warmup ramp too.

    Examples: ResNet-20 (Frankle & Carbin) ``WarmupStepDecay(0.03, 20000, (20000,
    25000))``; WRN-22-2 (RigL) ``WarmupStepDecay(0.1, 0, (30000, 60000, ...), 0.2)``.

    Args:
      base_lr: learning rate after warmup, before any decay.
      warmup_steps: iterations of linear warmup (0: none).
      boundaries: iterations (absolute, increasing) at which the rate is multiplied by
        ``decay_factor``.
      decay_factor: multiplier applied at each boundary.
      name: optional name for the ops.
    """

    def __init__(self, base_lr: float, warmup_steps: int = 0, boundaries: Sequence[int] = (),
                 decay_factor: float = 0.1, name: Optional[str] = None):
        super().__init__()
        boundaries = [int(b) for b in boundaries]
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if boundaries != sorted(boundaries):
            raise ValueError(f"boundaries must be increasing, got {boundaries}")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.boundaries = boundaries
        self.decay_factor = float(decay_factor)
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name or "WarmupStepDecay"):
            step = tf.cast(step, tf.float32)
            boundaries = tf.constant(self.boundaries, tf.float32, shape=[len(self.boundaries)])
            passed = tf.reduce_sum(tf.cast(step >= boundaries, tf.float32))
            lr = self.base_lr * tf.pow(tf.constant(self.decay_factor, tf.float32), passed)
            if self.warmup_steps > 0:
                lr *= tf.minimum(1.0, step / float(self.warmup_steps))
            return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_steps": self.warmup_steps,
                "boundaries": list(self.boundaries), "decay_factor": self.decay_factor,
                "name": self.name}
