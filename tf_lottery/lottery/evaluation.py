"""Validation during IMP training: the curve, the early-stopping iteration, its weights.

Frankle & Carbin 2019 report, beside the test accuracy at the end of training, the
*early-stopping iteration* (the iteration of minimum validation loss) and the test
accuracy there; their code evaluates every 100 iterations (``test_interval`` in
google-research/lottery-ticket-hypothesis, ``mnist_fc/train.py``). ``ValidationCurve``
does that inside ``fit``: every ``every`` iterations (and at the last one) it computes
the validation cross-entropy and accuracy in one compiled call per batch, without
touching the model's compiled metrics (so the training logs stay those of training),
and keeps a device-side copy of the weights at the lowest validation loss. With a
model compiled with ``steps_per_execution > 1`` it sizes every execution so that one
ends exactly at each validation point (and at the requested ``stops``).
"""
from typing import List, Optional

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.dispatch import is_keras3, live

_MAX_BATCH = 8192


class Evaluator:
    """Summed loss and correct predictions of a model over fixed validation data.

    Args:
      data: ``(x, y)`` numpy arrays or a batched ``tf.data.Dataset`` of ``(x, y)``;
        labels are class indices, or one-hot rows of the logits' width.
      loss: a Keras loss (``from_logits`` as the model needs); its batch mean is used.
      batch_size: examples per compiled call for numpy data (default: all, up to 8,192).
    """

    def __init__(self, data, loss, batch_size: Optional[int] = None):
        self.loss = loss
        if isinstance(data, tf.data.Dataset):
            self._batches, self.size = data, None
        else:
            x, y = (np.asarray(a) for a in data)
            step = int(batch_size or min(len(x), _MAX_BATCH)) or 1
            self._batches = [(tf.constant(x[i:i + step]), tf.constant(y[i:i + step]))
                             for i in range(0, len(x), step)]
            self.size = len(x)
        self._functions = {}

    def _function(self, model):
        key = id(model)
        if key not in self._functions and is_keras3(model):
            from tf_lottery.keras3.evaluation import batch_sums as keras3_sums
            self._functions[key] = (model, keras3_sums(model, self.loss))
        if key not in self._functions:
            loss = self.loss

            @tf.function(reduce_retracing=True)
            def batch_sums(x, y):
                logits = model(x, training=False)
                n = tf.cast(tf.shape(logits)[0], tf.float32)
                total = tf.cast(loss(y, logits), tf.float32) * n
                labels = y if y.shape.rank == 1 else tf.argmax(y, axis=-1)
                correct = tf.reduce_sum(tf.cast(
                    tf.equal(tf.cast(labels, tf.int64), tf.argmax(logits, axis=-1)), tf.float32))
                return total, correct, n

            self._functions[key] = (model, batch_sums)  # the model is kept: ids stay unique
        return self._functions[key][1]

    def __call__(self, model) -> dict:
        """``{"loss": mean loss, "accuracy": fraction correct}`` of ``model`` (inference mode).

        The sums stay tensors until the last batch: one device-to-host copy per call."""
        fn = self._function(model)
        sums = None
        for x, y in self._batches:
            batch = fn(x, y)
            sums = batch if sums is None else [a + b for a, b in zip(sums, batch)]
        total, correct, count = (0.0, 0.0, 0.0) if sums is None else (float(v) for v in sums)
        if not count:
            raise ValueError("the validation data is empty: hold out a non-empty part of the "
                             "training data (e.g. data.validation_split = 'train[90%:]')")
        return {"loss": total / count, "accuracy": correct / count}


class ValidationCurve(keras.callbacks.Callback):
    """Stops ``fit`` after ``iterations`` batches; validates every ``every`` of them.

    After ``fit``: ``curve`` lists ``{"iteration", "val_loss", "val_accuracy"}``
    (``iteration`` is the optimizer's count), ``best`` is the point of minimum validation
    loss (the first one on ties) and ``best_weights`` the model's weights there (device-side
    copies of ``model.weights``, in that order; ``restore_best`` writes them back), or None
    without validation data.

    Args:
      iterations: batches to train (``fit`` stops after them).
      evaluator: an ``Evaluator``, or None to train without validation.
      every: validate after every ``every`` batches of this ``fit`` and after the last.
      steps_per_execution: the value the model was compiled with; above 1 the curve sets
        ``model.steps_per_execution`` before every execution (at most this many batches)
        so that executions end exactly at each validation point, each of ``stops`` and
        the last batch; the model's callbacks then see those batches only.
      stops: batch counts of this ``fit`` at which an execution must end (e.g. the
        iteration another callback snapshots).
    """

    def __init__(self, iterations: int, evaluator: Optional[Evaluator] = None,
                 every: int = 100, steps_per_execution: int = 1, stops=()):
        super().__init__()
        self._supports_tf_logs = True
        if int(every) < 1:
            raise ValueError(f"eval_every must be >= 1 iteration, got {every}")
        self.iterations, self.every, self.evaluator = int(iterations), int(every), evaluator
        self.steps_per_execution = max(1, int(steps_per_execution))
        self.stops = sorted(int(s) for s in stops)
        self.done = 0
        self._epoch_start = 0
        self.curve: List[dict] = []
        self.best: Optional[dict] = None
        self.best_weights = None

    def _pace(self):
        """Sizes the next execution to end at the next validation point, stop or the end."""
        if self.steps_per_execution == 1:
            return
        ends = [self.iterations] + [s for s in self.stops if s > self.done]
        if self.evaluator is not None:
            ends.append((self.done // self.every + 1) * self.every)
        self.model.steps_per_execution = max(1, min(self.steps_per_execution,
                                                    min(ends) - self.done))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.done
        self._pace()

    def on_train_batch_end(self, batch, logs=None):
        before, self.done = self.done, self._epoch_start + int(batch) + 1
        last = self.done >= self.iterations
        if self.evaluator is not None and (last or self.done // self.every > before // self.every):
            self._validate()
        if last:
            self.model.stop_training = True
        else:
            self._pace()

    def _validate(self):
        scores = self.evaluator(live(self.model))
        point = {"iteration": int(self.model.optimizer.iterations.numpy()),
                 "val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
        self.curve.append(point)
        if self.best is None or point["val_loss"] < self.best["val_loss"]:
            self.best = point
            weights = self.model.weights
            if self.best_weights is None or len(self.best_weights) != len(weights):
                self.best_weights = [tf.Variable(w, trainable=False) for w in weights]
            else:
                for copy, weight in zip(self.best_weights, weights):
                    copy.assign(weight)

    def restore_best(self, model=None) -> None:
        """Writes the weights at ``best`` into ``model`` (default: the trained one)."""
        for weight, copy in zip((model or self.model).weights, self.best_weights):
            weight.assign(copy)
