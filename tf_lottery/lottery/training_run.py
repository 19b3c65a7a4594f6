"""One training of one kind at one level of an IMP run: build, compile, fit, test.

``TrainingRun`` is the part of ``IterativeMagnitudePruning`` (``tf_lottery.lottery.imp``)
that turns a masked model and a starting iteration into a summary row: it seeds, builds
and compiles models (each once, its optimizer state reset at every later training), feeds
``fit`` freshly shuffled batches, records the validation curve (``ValidationCurve``) and
measures test accuracy at the end of training and at the early-stopping iteration. The
level loop, pruning, controls and the run folder stay in ``imp``.
"""
import math
import time
from typing import Mapping

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.dispatch import (build_optimizer, get_masks, is_keras3, reset_optimizer,
                                 set_random_seed, sparsify)
from tf_lottery.lottery import controls as controls_
from tf_lottery.lottery.evaluation import Evaluator, ValidationCurve


def remaining(masks: Mapping[str, np.ndarray]) -> float:
    """Fraction of prunable weights left (0..1) across ``masks``."""
    return float(sum(np.count_nonzero(m) for m in masks.values())
                 / sum(np.size(m) for m in masks.values()))


class TrainingRun:
    """Mixin of ``IterativeMagnitudePruning``: trains and tests one kind of one level.

    Reads the runner's settings (``model_fn``, ``optimizer_fn``, ``loss``, ``metrics``,
    ``train_data``, ``test_data``, ``batch_size``, ``steps_per_epoch``, ``seed``,
    ``verbose``, ``callbacks``, ``eval_every``; ``total`` = T and ``k`` in iterations) and
    keeps per-run state in ``_optimizers`` (model id -> its compiled optimizer),
    ``_evaluator`` (validation) and ``_test_evaluator``.
    """

    def _steps_per_epoch(self, data) -> int:
        if isinstance(data, tf.data.Dataset):
            n = int(data.cardinality().numpy())
            if n < 1:
                raise ValueError("train_data has unknown length: pass steps_per_epoch")
            return n
        return int(math.ceil(len(data[0]) / int(self.batch_size)))

    def _seed(self, level: int, kind: str) -> None:
        offset = {"ticket": 0, "finetune": 0, "lr_rewind": 0, **controls_.SEED_OFFSETS}
        set_random_seed(self.seed * 100003 + level * 10 + offset[kind])

    def _build(self, seed_kind: str = "ticket", level: int = 0):
        self._seed(level, seed_kind)
        model = self.model_fn()
        if not (isinstance(model, keras.Model) or is_keras3(model)):
            raise TypeError(f"model_fn must return a tf_keras or Keras 3 Model, got "
                            f"{type(model)}")
        return sparsify(model, 0.0)

    def _compiled(self, model, start: int):
        """Compiles ``model`` once (its train function is traced once and reused by every
        later training) with its optimizer's slots built; later calls give its optimizer a
        fresh optimizer's state at iteration ``start`` instead of building and compiling a
        new one."""
        optimizer = self._optimizers.get(id(model))
        if optimizer is None:
            optimizer = self.optimizer_fn()
            model.compile(optimizer=optimizer, loss=self.loss, metrics=self.metrics,
                          steps_per_execution=self._steps_per_execution(model))
            build_optimizer(model)  # slots now: the first trace creates no variables, so
            self._optimizers[id(model)] = optimizer  # tf.function traces it once, not twice
        reset_optimizer(optimizer, start, model.trainable_variables)
        return optimizer

    def _steps_per_execution(self, model) -> int:
        """Batches per compiled call: as many as the validation points allow, or 1 when
        user callbacks or Keras' progress bars (verbose 3) must see every batch, or when
        ``ValidationCurve`` cannot resize executions (only tf_keras reads
        ``model.steps_per_execution`` anew before each one)."""
        if self.callbacks or self.verbose >= 3 or not isinstance(model, keras.Model):
            return 1
        return self.total

    def _fit_args(self, iterations: int) -> dict:
        """``fit`` arguments for ``iterations`` batches of freshly shuffled training data.

        Arrays become one dataset (a new permutation per pass over the data, a partial
        last batch, as ``fit`` makes from arrays), repeated like a dataset given as
        ``train_data``, so every setting trains on the same batches. Keras epochs are the
        data's at verbose 2 (one line per epoch) and with user callbacks; otherwise nothing
        looks at epochs and the whole training is one, so that executions span whole
        validation intervals."""
        data = self.train_data
        if not isinstance(data, tf.data.Dataset):
            x, y = data
            data = (tf.data.Dataset.from_tensor_slices((x, y))
                    .shuffle(len(x), seed=self.seed, reshuffle_each_iteration=True)
                    .batch(int(self.batch_size)).prefetch(tf.data.AUTOTUNE))
        args = {"x": data.repeat(), "shuffle": False}  # shuffled above; Keras 3 warns otherwise
        if self.verbose >= 2 or self.callbacks:
            return dict(args, steps_per_epoch=self.steps_per_epoch,
                        epochs=int(math.ceil(iterations / self.steps_per_epoch)))
        return dict(args, steps_per_epoch=iterations, epochs=1)

    def _train(self, model, start: int, level: int, kind: str, extra_callbacks=(),
               stops=()) -> dict:
        """Trains ``model`` T - k iterations from iteration ``start`` with a fresh
        optimizer state, then tests it (and its early-stopping weights)."""
        self._seed(level, kind)
        optimizer = self._compiled(model, start)
        iterations = self.total - self.k
        history = ValidationCurve(iterations, self._evaluator, self.eval_every,
                                  self._steps_per_execution(model), stops)
        t0 = time.perf_counter()
        fit_verbose = {2: 2, 3: 1}.get(int(self.verbose), 0)
        model.fit(**self._fit_args(iterations), verbose=fit_verbose,
                  callbacks=[history, *extra_callbacks, *self.callbacks])
        fit_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        accuracy, test_loss = self._test(model)
        best = history.best
        early_accuracy = None
        if best is not None:
            early_accuracy = accuracy
            if best is not history.curve[-1]:  # test the weights of the early-stopping point
                final = [tf.identity(w) for w in model.weights]
                history.restore_best(model)
                early_accuracy = self._test(model)[0]
                for weight, value in zip(model.weights, final):
                    weight.assign(value)
        eval_seconds = time.perf_counter() - t0
        masks = get_masks(model)
        return {
            "level": level, "kind": kind, "remaining": remaining(masks),
            "test_accuracy": accuracy, "test_loss": test_loss,
            "early_stop_iteration": None if best is None else best["iteration"],
            "early_stop_test_accuracy": early_accuracy,
            "early_stop_val_loss": None if best is None else best["val_loss"],
            "best_val_accuracy": max((p["val_accuracy"] for p in history.curve), default=None),
            "iterations": int(optimizer.iterations.numpy()) - start,
            "fit_seconds": fit_seconds, "eval_seconds": eval_seconds, "curve": history.curve,
        }

    def _test(self, model):
        """(test accuracy, test loss) of ``model`` as it is: the one test measurement, the
        loss with the model's regularisation terms as ``evaluate`` reports it."""
        if self._test_evaluator is None:
            self._test_evaluator = Evaluator(self.test_data, self.loss)
        scores = self._test_evaluator(model)
        penalty = float(tf.add_n(model.losses)) if model.losses else 0.0
        return float(scores["accuracy"]), float(scores["loss"]) + penalty
