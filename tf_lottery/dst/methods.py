"""The dynamic sparse training methods: ``RigL``, ``SET``, ``SNFS``, ``StaticSparse`` and
``GradualMagnitudePruning``: their arguments, schedules and rules.

Each is a ``model.fit`` callback (``tf_lottery.dst.callback``) and, for any other training
loop, the ``method`` of a ``tfl.SparseOptimizer`` (``tf_lottery.dst.optimizer``); both
run the same ``MaskUpdateEngine``.
"""
from typing import Optional, Sequence

import gin

from tf_lottery._keras import tf, tfmot
from tf_lottery.dst import arrays, schedules, updaters
from tf_lottery.dst.callback import MaskUpdateCallback, _check_int
from tf_lottery.dispatch import masked_layers

__all__ = ["RigL", "SET", "SNFS", "StaticSparse", "GradualMagnitudePruning"]


class _DropGrowCallback(MaskUpdateCallback):
    """Shared by RigL, SET, SNFS and StaticSparse: the drop-fraction schedule."""

    def __init__(self, delta_t: int = 100, end_step: Optional[int] = None, alpha: float = 0.3,
                 decay="cosine", *, seed: int = 0, total_steps: Optional[int] = None,
                 log_dir: Optional[str] = None, verbose: int = 0,
                 structure: str = "unstructured"):
        super().__init__(seed=seed, total_steps=total_steps, log_dir=log_dir, verbose=verbose)
        self.updater = type(self.updater)(structure)
        self.delta_t = _check_int(delta_t, "delta_t")
        self.end_step = _check_int(end_step, "end_step", allow_none=True)
        self.alpha = schedules.check_alpha(alpha)
        self.decay = decay
        self._decay_fn = schedules.get(decay)
        self._end = self.end_step

    def _check_schedule(self, total_steps):
        if self.end_step is None:
            if total_steps is None:
                raise ValueError(
                    f"{type(self).__name__}: the number of training steps is unknown (fit "
                    "without steps_per_epoch on a dataset of unknown size); pass end_step= "
                    "or total_steps=")
            self._end = max(1, int(round(0.75 * total_steps)))
        else:
            if total_steps is not None and self.end_step > total_steps:
                raise ValueError(
                    f"{type(self).__name__}: end_step={self.end_step} is beyond the end of "
                    f"training ({total_steps} steps = epochs x steps per epoch); updates stop "
                    "at end_step, so it must be at most the number of training steps (RigL "
                    "uses 75% of training). Pass total_steps= if you call fit several times")
            self._end = self.end_step

    def drop_fraction(self, step):
        """f(step) of this callback's schedule (numbers or tensors)."""
        return self._decay_fn(step, self.alpha, self._end)

    def _schedule(self, step, xp=arrays.TF):
        is_update = xp.logical_and(xp.equal(xp.mod(step, self.delta_t), 0),
                                   step <= self._end)
        return is_update, xp.cast(self.drop_fraction(step), xp.float32)

    def _schedule_key(self):
        return (self.delta_t, self.alpha, self.decay, self._end)

    def _change_bound(self, k_max):
        # the drop fraction never exceeds alpha; + 1 for float32 rounding of the count
        return min(int(k_max), int(k_max * self.alpha) + 1)

    def _next_update_after(self, step):
        nxt = (int(step) // self.delta_t + 1) * self.delta_t
        return nxt if nxt <= self._end else None


class RigL(_DropGrowCallback):
    """RigL (Evci et al. 2020): every ``delta_t`` steps until ``end_step``, drop the
    ``f(t)`` fraction of active weights with the smallest magnitude in every masked weight
    and grow as many where the dense gradient of the loss on the current batch is largest.

    A ``model.fit`` callback; in any other loop, the ``method`` of ``tfl.SparseOptimizer``
    (as are ``SET``, ``SNFS``, ``StaticSparse`` and ``GradualMagnitudePruning``).

    Args:
      delta_t: steps between mask updates (>= 1; 100 in the paper).
      end_step: last step that may update masks; default 75% of the training steps
        (``epochs * steps_per_epoch`` of the fit call, or ``total_steps``; with
        ``tfl.SparseOptimizer`` there is no fit call: give ``end_step`` or ``total_steps``).
      alpha: initial drop fraction, in (0, 1] (0.3).
      decay: ``"cosine"`` (default), ``"linear"``, ``"constant"`` or a callable
        ``f(step, alpha, end_step)``; see ``tf_lottery.dst.schedules``.
      seed: seed of the stateless tie-breaking (and SET's random growth).
      total_steps: training length in optimizer steps, if fit is called several times.
      log_dir: if set, TensorBoard scalars per update under ``log_dir/dst`` (drop fraction,
        per-layer sparsity, connections changed) and ``log_dir/layer_sparsity.png``.
      verbose: print one line per update.
      structure: ``"constant_fan_in"`` drops and grows per output unit, keeping a mask
        from ``tfl.sparsify(..., structure="constant_fan_in")`` constant fan-in.
    """

    updater = updaters.RigLUpdater()


class SET(_DropGrowCallback):
    """SET (Mocanu et al. 2018): as ``RigL`` but grows at random (stateless, seeded by
    (seed, layer, step)). Same arguments as ``RigL``."""

    updater = updaters.SETUpdater()


class SNFS(_DropGrowCallback):
    """SNFS (Dettmers & Zettlemoyer 2019, as in the RigL paper): as ``RigL`` but grows where
    the momentum of the dense gradient is largest, without redistribution across layers.

    The momentum is an exponential moving average ``m = momentum * m + (1 - momentum) * g``
    of the all-reduced dense gradient ``g``, kept by the callback (one float32 variable per
    masked weight) and updated at every step, so the dense gradient is computed every step.

    Args: as ``RigL``, plus ``momentum`` in [0, 1) (0.9).
    """

    updater = updaters.SNFSUpdater()

    def __init__(self, delta_t: int = 100, end_step: Optional[int] = None, alpha: float = 0.3,
                 decay="cosine", *, momentum: float = 0.9, **kwargs):
        super().__init__(delta_t, end_step, alpha, decay, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum


class StaticSparse(_DropGrowCallback):
    """Static sparse training: masks never change (the baseline). Takes the same arguments
    as ``RigL`` (validated, then unused) so that methods can be swapped in configs; it
    installs nothing, so training runs Keras' own train step."""

    updater = updaters.StaticUpdater()

    def _check_schedule(self, total_steps):
        if self.end_step is not None or total_steps is not None:
            super()._check_schedule(total_steps)


class GradualMagnitudePruning(MaskUpdateCallback):
    """Gradual magnitude pruning (Zhu & Gupta 2018) through the same masked layers.

    At the steps where ``schedule`` prunes, every masked weight keeps its largest-magnitude
    active entries so that its sparsity reaches the schedule's target; nothing regrows.
    Start from dense masks (``tfl.sparsify(model, 0.0)``) for the RigL paper's "Prune"
    baseline.

    Args:
      schedule: a ``tfmot.sparsity.keras.PruningSchedule`` (``PolynomialDecay(initial_
        sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100)`` as in
        Zhu & Gupta, or ``ConstantSparsity``); it is called with the optimizer step count.
      dense_layers: layer names (or ``"layer/weight"`` keys) never pruned.
      seed, total_steps, log_dir, verbose: as in ``RigL``.
    """

    updater = updaters.MagnitudePruningUpdater()
    amount_name = "target_sparsity"

    def __init__(self, schedule, dense_layers: Sequence[str] = (), *, seed: int = 0,
                 total_steps: Optional[int] = None, log_dir: Optional[str] = None,
                 verbose: int = 0):
        super().__init__(seed=seed, total_steps=total_steps, log_dir=log_dir, verbose=verbose)
        if not isinstance(schedule, tfmot.sparsity.keras.PruningSchedule):
            raise TypeError("schedule must be a tfmot.sparsity.keras.PruningSchedule, e.g. "
                            "tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, 0, 1000), got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.dense_layers = tuple(dense_layers)

    def _check_schedule(self, total_steps):
        end = getattr(self.schedule, "end_step", None)
        if total_steps is not None and end is not None and end != -1 and end > total_steps:
            raise ValueError(
                f"GradualMagnitudePruning: the schedule's end_step={end} is beyond the end of "
                f"training ({total_steps} steps); the final sparsity would never be reached")

    def _takes_part(self, layer, weight_name):
        return not ({layer.layer.name, f"{layer.layer.name}/{weight_name}"}
                    & set(self.dense_layers))

    def _check_model(self, model):
        layers = masked_layers(model)
        names = {layer.layer.name for layer in layers}
        names |= {f"{layer.layer.name}/{n}" for layer in layers for n in layer.weight_names}
        unknown = sorted(set(self.dense_layers) - names)
        if unknown:
            raise ValueError(f"dense_layers {unknown} are not masked layers of the model; "
                             f"masked: {sorted(layer.layer.name for layer in layers)}")

    def _schedule_key(self):
        return (self.schedule,)

    def _schedule(self, step, xp=arrays.TF):
        if xp.name == "tensorflow":
            should_prune, sparsity = self.schedule(step)
            return tf.convert_to_tensor(should_prune), tf.cast(sparsity, tf.float32)
        return schedules.pruning_schedule(self.schedule, step, xp)

    def _next_update_after(self, step):
        begin = int(getattr(self.schedule, "begin_step", 0))
        freq = int(getattr(self.schedule, "frequency", 1))
        end = getattr(self.schedule, "end_step", -1)
        nxt = max(begin, begin + ((int(step) - begin) // freq + 1) * freq)
        if end is not None and end != -1 and nxt > end:
            return None
        return nxt


# gin: ``@RigL`` / ``tf_lottery.dst.RigL.delta_t = 100`` etc. in .gin files.
for _cls in (RigL, SET, SNFS, StaticSparse, GradualMagnitudePruning):
    gin.configurable(_cls, module="tf_lottery.dst")
# tfmot's schedules, for ``GradualMagnitudePruning.schedule = @PolynomialDecay()``.
for _cls in (tfmot.sparsity.keras.PolynomialDecay, tfmot.sparsity.keras.ConstantSparsity):
    gin.external_configurable(_cls, module="tfmot.sparsity.keras")
del _cls
