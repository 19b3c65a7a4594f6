"""Rewinding: snapshot the weights at iteration k, later reset a masked model to them.

What a snapshot holds and ``rewind`` restores: every variable of the model except
the masks, so kernels, biases and BatchNormalization's gamma/beta *and* moving
mean/variance all return to iteration k. The masks are kept, and masked entries are
zeroed again after the restore. The optimizer's state (slots such as momentum and
Adam moments) is reset to zero and its iteration counter set to k, so a learning
rate schedule replays from the rewind point. Works on tf_keras and Keras 3 models
(TensorFlow and JAX backends; on JAX a snapshot inside ``fit`` reads the current step).
"""
import re
from typing import Dict, List, Optional, Union

import gin
import numpy as np

from tf_lottery._keras import keras
from tf_lottery.dispatch import is_keras3, live, masked_layers, reset_optimizer

Step = Union[int, str]


def parse_step(step: Step, steps_per_epoch: Optional[int] = None) -> int:
    """Iterations for ``step``: an int, ``"500it"`` (iterations) or ``"2ep"`` (epochs)."""
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        value = int(step)
    else:
        match = re.fullmatch(r"\s*(\d+)\s*(it|ep)\s*", str(step))
        if not match:
            raise ValueError(f"rewind step {step!r} must be an int or a string like '500it' "
                             "(iterations) or '2ep' (epochs)")
        value = int(match.group(1))
        if match.group(2) == "ep":
            if not steps_per_epoch:
                raise ValueError(f"rewind step {step!r} is in epochs, but the number of steps "
                                 "per epoch is unknown; give the step in iterations ('500it')")
            value *= int(steps_per_epoch)
    if value < 0:
        raise ValueError(f"rewind step must be >= 0, got {step!r}")
    return value


def _state_variables(model) -> List:
    masks = {id(m) for layer in masked_layers(model) for _, m in layer.masked_weights}
    return [v for v in model.weights if id(v) not in masks]


def snapshot(model) -> Dict[str, np.ndarray]:
    """Values of every non-mask variable of ``model``, keyed by position ("0007:name");
    masked entries are re-zeroed first."""
    live(model)
    for layer in masked_layers(model):
        layer.apply_masks()
    return {f"{i:04d}:{v.name}": v.numpy() for i, v in enumerate(_state_variables(model))}


def rewind(model, values: Dict[str, np.ndarray], optimizer=None, iteration: int = 0) -> None:
    """Restores a ``snapshot`` into ``model`` keeping its masks (masked entries become 0).

    Args:
      model: the model the snapshot was taken from (or one built by the same code).
      values: a dict from ``snapshot``.
      optimizer: if given, it is reset to a fresh optimizer's state (slots at their initial
        values, EMA copies equal to the rewound weights) at iteration ``iteration``.
        Without it the live optimizer keeps its state; masked entries stay 0 either way.
      iteration: the iteration the snapshot was taken at.
    """
    variables = _state_variables(live(model))
    if len(values) != len(variables):
        raise ValueError(f"snapshot has {len(values)} variables, the model has "
                         f"{len(variables)}: it was taken from a different architecture")
    for variable, (key, value) in zip(variables, sorted(values.items())):
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise ValueError(f"snapshot entry {key} has shape {np.shape(value)}, model variable "
                             f"{variable.name} has {tuple(variable.shape)}")
        variable.assign(value)
    for layer in masked_layers(model):
        layer.apply_masks()
    if optimizer is not None:
        reset_optimizer(optimizer, iteration, model.trainable_variables)


@gin.configurable
class RewindCheckpoint(keras.callbacks.Callback):
    """Keeps a snapshot of the model's weights at iteration ``step`` of training.

    Args:
      step: when to snapshot: 0 (the initialisation, taken at the start of training),
        an iteration count (int or ``"500it"``), or epochs (``"2ep"``, converted with the
        steps per epoch that ``fit`` reports).

    After ``fit``, ``self.values`` holds the snapshot (None if training stopped before
    ``step``) and ``self.iteration`` the iteration it was taken at; ``self.rewind(model)``
    restores it. Iterations count the optimizer's steps (``optimizer.iterations``).
    """

    def __init__(self, step: Step = 0):
        super().__init__()
        self._supports_tf_logs = True
        parse_step(step, steps_per_epoch=1)
        self.step = step
        self.iteration: Optional[int] = None
        self.values: Optional[Dict[str, np.ndarray]] = None

    def _take(self, iteration: int) -> None:
        self.values = snapshot(self.model)
        self.iteration = iteration

    def on_train_begin(self, logs=None):
        self._target = parse_step(self.step, (self.params or {}).get("steps"))
        self._current = int(live(self.model).optimizer.iterations.numpy())
        if self.values is None and self._target <= self._current:
            self._take(self._current)

    def on_train_batch_end(self, batch, logs=None):
        if is_keras3(self.model):  # counted, not read: JAX's state needs no sync per batch
            self._current += int(getattr(self.model, "steps_per_execution", 1) or 1)
        else:  # a tf_keras call may run several steps (steps_per_execution)
            self._current = int(self.model.optimizer.iterations.numpy())
        if self.values is None and self._current >= self._target:
            self._take(self._current)

    def rewind(self, model=None, optimizer=None) -> None:
        """Rewinds ``model`` (default: the trained one) to the snapshot, keeping masks."""
        if self.values is None:
            raise ValueError(f"no snapshot was taken: training ended before step {self.step}")
        rewind(model or self.model, self.values, optimizer, self.iteration)
