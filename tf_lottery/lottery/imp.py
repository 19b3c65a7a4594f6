"""Iterative magnitude pruning (IMP) with rewinding, its controls and its baselines.

One *level* trains a masked model and then prunes a fraction of the surviving
weights by magnitude; level 0 is the dense network. What the next level starts from
is the *mode* (one main line per run):

- ``"ticket"`` (Frankle & Carbin 2019; Frankle et al. 2020): the survivors are reset
  to theta_k, the weights at iteration ``rewind_step`` of level 0 (k = 0 is the
  initialisation), and training replays the schedule from iteration k;
- ``"finetune"`` (Liu et al. 2021): the trained weights are kept and trained again for
  the same number of iterations at the schedule's final learning rate (the optimizer's
  iteration counter continues from the end of training);
- ``"lr_rewind"`` (Renda et al. 2020): the trained weights are kept and the learning
  rate schedule is replayed from iteration k.

Controls (ticket mode, levels >= 1; ``tf_lottery.lottery.controls``) train beside the
ticket and never feed the next level. Every kind trains ``T - k`` iterations, T being
``epochs`` of training data.
"""
import logging
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import gin
import numpy as np

from tf_lottery._io import gfile
from tf_lottery._keras import keras, tf
from tf_lottery.lottery import controls as controls_
from tf_lottery.lottery import results
from tf_lottery.lottery.controls import CONTROLS, reinitialise  # noqa: F401  (public here too)
from tf_lottery.lottery.evaluation import Evaluator
from tf_lottery.lottery.progress import LevelProgress
from tf_lottery.lottery.rewind import RewindCheckpoint, parse_step, rewind
from tf_lottery.lottery.run_identity import describe, fingerprint
from tf_lottery.lottery.training_run import TrainingRun, remaining  # noqa: F401  (public here too)
from tf_lottery.dispatch import (check_masks_agree, get_masks, get_weights, is_keras3,
                                 keras_of, output_keys, set_masks)
from tf_lottery.masking import selection

log = logging.getLogger("tf_lottery")

MODES = ("ticket", "finetune", "lr_rewind")


@gin.configurable
class IterativeMagnitudePruning(TrainingRun):
    """Finds lottery tickets (or runs a pruning baseline) over ``levels`` levels.

    Args:
      model_fn: builds a fresh, built, uncompiled tf_keras or Keras 3 model (Sequential
        or functional; Keras 3 on the TensorFlow or JAX backend). Called once for the
        main line and once per control. ``optimizer_fn`` and ``loss`` must be of the
        same Keras.
      train_data, test_data: ``(x, y)`` numpy arrays or batched ``tf.data.Dataset``s.
      optimizer_fn: builds a fresh optimizer (one per level and kind: the optimizer
        state is reset at every rewind).
      loss, metrics: passed to ``compile``; an "accuracy" metric is required. The default
        loss is the model's Keras' ``SparseCategoricalCrossentropy(from_logits=True)``.
      epochs: training length T of one level, in epochs of ``train_data``.
      batch_size: for numpy data.
      steps_per_epoch: for datasets of unknown length.
      validation_data: ``(x, y)`` arrays or a batched dataset held out of the TRAINING
        data (never the test set), for the validation curve and the early-stopping
        iteration (the iteration of minimum validation loss, Frankle & Carbin 2019);
        None trains without validation (no early-stopping figures).
      eval_every: validate every this many iterations (and at the last one); 100 as
        Frankle & Carbin's code (``test_interval``).
      validation_note: a description of the validation data (e.g. which split it was
        held out of), kept in ``run.json`` and ``summary.json``.
      levels: number of levels including the dense level 0.
      fraction: fraction of the surviving weights pruned per level (0.2: level i keeps
        0.8^i).
      output_fraction: fraction for the layer(s) that produce the model's output(s)
        (Frankle & Carbin prune the output layer at half the rate), found by following
        each output back to its nearest prunable layer; None uses ``fraction``.
      layer_fractions: layer name -> fraction, overriding the two above.
      scope: ``"layerwise"`` or ``"global"`` (the layers at ``fraction`` are pooled and
        pruned by one threshold, Frankle & Carbin section 4 for deep networks; the output
        layer under ``output_fraction`` and ``layer_fractions`` layers are pruned on their
        own).
      rewind_step: k, as iterations (int, ``"500it"``) or epochs (``"1ep"``).
      controls: any of ``"reinit"``, ``"random_mask"`` (ticket mode only).
      mode: ``"ticket"``, ``"finetune"`` or ``"lr_rewind"``.
      seed: seeds the initialisation, data order and random masks of every level. The data
        order (a new permutation per pass over array data) is the same for every level and
        kind of one run, as open_lth keeps one data order per replicate; trials differ in it.
      output_dir: where results go (see ``tf_lottery.lottery.results``), local or on any
        ``tf.io.gfile`` filesystem (``gs://bucket/run``); every level and kind can be
        exported from it with ``tf-lottery export --run_dir``. None keeps nothing on disk
        and cannot resume.
      overwrite: move a different run found in ``output_dir`` aside
        (``output_dir.old-<time>``) and start again; a folder tf-lottery did not write is
        always refused (see ``tf_lottery.lottery.results.RunDirectory``).
      deterministic: enable TensorFlow op determinism so a resumed run reproduces an
        uninterrupted one bit for bit.
      verbose: 0 = silent (one ``logging`` INFO line per level); 1 = a level progress
        bar (levels done, time per level, time left) and one printed line per level;
        2 = also one line per epoch; 3 = also Keras' per-epoch progress bars.
      callbacks: extra Keras callbacks for every ``fit``.
      trials: N > 1 runs N seeds (``seed``, ``seed + 1``, ...), each in its own run folder
        ``output_dir/trial_<i>``, and ``run`` returns their mean, std, min and max per level
        and kind (``tf_lottery.lottery.trials``); 1 is one run in ``output_dir`` itself.
    """

    def __init__(self, model_fn: Callable, train_data, test_data, optimizer_fn: Callable,
                 loss=None, metrics: Sequence = ("accuracy",), epochs: int = 10,
                 batch_size: Optional[int] = 60, steps_per_epoch: Optional[int] = None,
                 validation_data=None, eval_every: int = 100,
                 validation_note: Optional[str] = None, levels: int = 20,
                 fraction: float = 0.2,
                 output_fraction: Optional[float] = None,
                 layer_fractions: Optional[Mapping[str, float]] = None,
                 scope: str = "layerwise", rewind_step=0, controls: Sequence[str] = (),
                 mode: str = "ticket", seed: int = 0, output_dir: Optional[str] = None,
                 overwrite: bool = False, deterministic: bool = True, verbose: int = 1,
                 callbacks: Sequence = (), trials: int = 1):
        self._arguments = {k: v for k, v in locals().items() if k != "self"}  # for trials
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        controls = tuple(controls or ())
        bad = [c for c in controls if c not in CONTROLS]
        if bad:
            raise ValueError(f"unknown controls {bad}; use any of {CONTROLS}")
        if controls and mode != "ticket":
            raise ValueError(f"controls {controls} compare against tickets: use mode='ticket'")
        if scope not in ("layerwise", "global"):
            raise ValueError(f"scope must be 'layerwise' or 'global', got {scope!r}")
        if int(levels) < 1 or int(epochs) < 1:
            raise ValueError("levels and epochs must be >= 1")
        for name, value in [("fraction", fraction), ("output_fraction", output_fraction),
                            *((f"layer_fractions[{k!r}]", v)
                              for k, v in (layer_fractions or {}).items())]:
            if value is not None and not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (the share of surviving weights "
                                 f"pruned per level), got {value}")
        self.model_fn, self.optimizer_fn = model_fn, optimizer_fn
        self.train_data, self.test_data = train_data, test_data
        if int(eval_every) < 1:
            raise ValueError(f"eval_every must be >= 1 iteration, got {eval_every}")
        self.validation_data, self.eval_every = validation_data, int(eval_every)
        self.validation_note = validation_note
        self.loss = loss  # None: the model's Keras' default, set in run()
        self._loss_arg = loss  # the run's identity describes the default as 0.1 did
        self._evaluator = None
        self._test_evaluator = None
        self.metrics = list(metrics)
        self.epochs, self.batch_size = int(epochs), batch_size
        self.steps_per_epoch = steps_per_epoch or self._steps_per_epoch(train_data)
        self.levels, self.fraction = int(levels), float(fraction)
        self.output_fraction, self.layer_fractions = output_fraction, dict(layer_fractions or {})
        self.scope, self.controls, self.mode = scope, controls, mode
        self.rewind_step = rewind_step
        self.k = parse_step(rewind_step, self.steps_per_epoch)
        self.total = self.epochs * self.steps_per_epoch
        if self.k >= self.total:
            raise ValueError(f"rewind_step {rewind_step!r} = {self.k} iterations is not before "
                             f"the end of training ({self.total} iterations)")
        self.seed, self.deterministic = int(seed), deterministic
        self.verbose, self.callbacks = verbose, list(callbacks)
        self.output_dir, self.overwrite = output_dir, overwrite
        if int(trials) < 1:
            raise ValueError(f"trials must be >= 1, got {trials}")
        self.trials = int(trials)
        self.timings: List[dict] = []
        self._control_models: Dict[str, tuple] = {}
        self._optimizers: Dict[int, object] = {}
        self._writers: Dict[str, object] = {}

    def config(self) -> dict:
        """What determines the results; a second run into the same folder must match."""
        return {
            "model_fn": describe(self.model_fn), "optimizer_fn": describe(self.optimizer_fn),
            "loss": describe(self._loss_arg if self._loss_arg is not None else
                             keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
            "metrics": describe(self.metrics),
            "train_data": fingerprint(self.train_data),
            "test_data": fingerprint(self.test_data),
            "validation_data": fingerprint(self.validation_data),
            "validation_note": self.validation_note, "eval_every": self.eval_every,
            "epochs": self.epochs, "batch_size": self.batch_size,
            "steps_per_epoch": self.steps_per_epoch, "levels": self.levels,
            "fraction": self.fraction, "output_fraction": self.output_fraction,
            "layer_fractions": self.layer_fractions, "scope": self.scope,
            "rewind_step": str(self.rewind_step), "controls": list(self.controls),
            "mode": self.mode, "seed": self.seed, "deterministic": self.deterministic,
            "gin": gin.config_str() if gin.config_str().strip() else None,
        }

    def _fractions(self, model):
        """``(key -> fraction, pool)``: each weight's pruning fraction, and the keys that
        ``scope="global"`` pools (those at ``fraction``: not the output layer when
        ``output_fraction`` is set, not the layers named in ``layer_fractions``)."""
        keys = list(get_masks(model))
        out = {k: self.fraction for k in keys}
        pinned = set()
        if self.output_fraction is not None:
            for k in output_keys(model):
                out[k] = float(self.output_fraction)
                pinned.add(k)
        layers = {k.split("/", 1)[0] for k in keys}
        unknown = sorted(set(self.layer_fractions) - layers)
        if unknown:
            raise ValueError(f"layer_fractions names {unknown}, which are not prunable layers; "
                             f"prunable layers are {sorted(layers)}")
        for k in keys:
            name = k.split("/", 1)[0]
            if name in self.layer_fractions:
                out[k] = float(self.layer_fractions[name])
                pinned.add(k)
        return out, [k for k in keys if k not in pinned]

    def _controls(self, level: int, masks) -> List[dict]:
        return controls_.train_controls(self, level, masks)

    def _validate(self, model) -> None:
        """Everything a level needs that could be wrong, checked before anything is written:
        the optimizer builds, per-layer fractions name real layers."""
        optimizer = self.optimizer_fn()
        k = keras_of(model)
        if not isinstance(optimizer, k.optimizers.Optimizer):
            flavour = "Keras 3" if is_keras3(model) else "tf_keras"
            raise TypeError(f"optimizer_fn must return a {flavour} optimizer for this "
                            f"{flavour} model, got {type(optimizer).__module__}."
                            f"{type(optimizer).__name__}")
        if self.loss is None:
            self.loss = k.losses.SparseCategoricalCrossentropy(from_logits=True)
        if self._evaluator is None and self.validation_data is not None:
            self._evaluator = Evaluator(self.validation_data, self.loss)
        self._fractions(model)

    def run(self) -> List[dict]:
        """Runs (or resumes) every level; returns the summary rows (one per level and kind).

        Each row has ``level``, ``kind``, ``remaining`` (fraction of prunable weights left),
        ``test_accuracy`` (0..1, at the end of training), ``early_stop_iteration`` (the
        optimizer iteration of minimum validation loss), ``early_stop_test_accuracy`` (the
        test accuracy of the weights at that iteration), ``early_stop_val_loss``,
        ``best_val_accuracy`` (the early-stopping figures are None without validation
        data), ``iterations``, ``fit_seconds`` and ``wall_seconds``. A finished run in
        ``output_dir`` is read back, and nothing in the folder is written again. With
        ``trials`` > 1: the rows of ``tf_lottery.lottery.trials.aggregate``.
        """
        if self.trials > 1:
            from tf_lottery.lottery.trials import run_trials
            return run_trials(self)
        if self.deterministic:
            tf.config.experimental.enable_op_determinism()
        model = self._build()
        self._validate(model)
        folder = (results.RunDirectory(self.output_dir, self.config(), self.overwrite)
                  if self.output_dir else None)
        start_level = 0
        if folder is not None:
            folder.write_architecture(model)
            start_level = results.finished_levels(folder.path, self.levels)
            if start_level == self.levels:
                log.info("%s: all %d levels are finished", self.output_dir, self.levels)
                rows = folder.rows(self.levels)
                if gfile.exists(folder.file("summary.json")):
                    return [{k: v for k, v in r.items() if k != "curve"} for r in rows]
                return self._finish(folder, rows)
            if start_level:
                log.info("%s: resuming at level %d", self.output_dir, start_level)
        rows = folder.rows(start_level) if folder is not None else []
        if start_level > 0:
            self._theta_k = results.read_arrays(folder.file("rewind_point.npz"))
            results.load_weights(model, folder.level(start_level - 1, "weights.h5"))
        self._progress = LevelProgress(self.levels, start_level, self.verbose)
        for level in range(start_level, self.levels):
            rows += self._level(level, model, folder)
        return self._finish(folder, rows)

    def _level(self, level, model, folder) -> List[dict]:
        t_level = time.perf_counter()
        extra = []
        if level == 0:
            start = 0
            checkpoint = RewindCheckpoint(self.k)
            extra = [checkpoint]
        else:
            trained = get_weights(model)
            fractions, pool = self._fractions(model)
            masks = selection.prune_surviving(trained, get_masks(model), fractions,
                                              self.scope, pool)
            if self.mode == "ticket":
                rewind(model, self._theta_k)
                start = self.k
            else:
                start = self.total if self.mode == "finetune" else self.k
            set_masks(model, masks)
            strategy = getattr(model, "distribute_strategy", None)  # none on Keras 3 + JAX
            if strategy is not None and strategy.num_replicas_in_sync > 1:
                check_masks_agree(model)  # pruned from each worker's copy of the weights
        prep_seconds = time.perf_counter() - t_level
        row = self._train(model, start, level, self.mode, extra,
                          stops=(self.k,) if level == 0 and self.k else ())
        if level == 0:
            self._theta_k = checkpoint.values
            if folder is not None:
                results.write_arrays(folder.file("rewind_point.npz"), checkpoint.values)
        masks = get_masks(model)
        kinds = [row]
        if level > 0:
            kinds += self._controls(level, masks)
        t_save = time.perf_counter()
        if folder is not None:
            results.write_arrays(folder.level(level, "masks.npz"), masks)
            for kind in self.controls if level > 0 else ():
                results.save_weights(self._control_models[kind][0],
                                     folder.level(level, f"weights_{kind}.h5"))
            results.save_weights(model, folder.level(level, "weights.h5"))
        wall = time.perf_counter() - t_level
        train_seconds = sum(r["fit_seconds"] + r["eval_seconds"] for r in kinds)
        overhead = wall - train_seconds
        for r in kinds:
            r["wall_seconds"] = wall
        layer_remaining = {k: float(np.count_nonzero(m) / m.size) for k, m in masks.items()}
        metrics = {"level": level, "remaining": row["remaining"],
                   "layer_remaining": layer_remaining, "kinds": kinds,
                   "overhead_seconds": overhead, "train_seconds": train_seconds,
                   "overhead_share": overhead / wall,
                   "prepare_seconds": prep_seconds,
                   "save_seconds": time.perf_counter() - t_save}
        if folder is not None:
            results.write_json(folder.level(level, "metrics.json"), metrics)
            self._tensorboard(folder, kinds)
        self.timings.append(metrics)
        controls = ", ".join(f"{r['kind']} {r['test_accuracy']:.4f}" for r in kinds[1:])
        early = ("" if row.get("early_stop_test_accuracy") is None else
                 f" ({row['early_stop_test_accuracy']:.4f} at its early-stopping iteration "
                 f"{row['early_stop_iteration']})")
        line = (f"level {level}: {100 * row['remaining']:.2f}% of weights remain, "
                f"{row['kind']} test accuracy {row['test_accuracy']:.4f}{early}"
                f"{f' ({controls})' if controls else ''}; {wall:.1f} s "
                f"(overhead {100 * overhead / wall:.2f}%)")
        self._progress.level_done(level, line)
        return kinds

    def _tensorboard(self, folder, kinds) -> None:
        for r in kinds:
            if r["kind"] not in self._writers:
                self._writers[r["kind"]] = tf.summary.create_file_writer(
                    folder.file(f"tensorboard/{r['kind']}"))
            writer = self._writers[r["kind"]]
            with writer.as_default(step=r["level"]):
                tf.summary.scalar("test_accuracy", r["test_accuracy"])
                tf.summary.scalar("percent_remaining", 100 * r["remaining"])
                if r["best_val_accuracy"] is not None:
                    tf.summary.scalar("best_val_accuracy", r["best_val_accuracy"])
                    tf.summary.scalar("early_stop_test_accuracy", r["early_stop_test_accuracy"])
                    tf.summary.scalar("early_stop_iteration", r["early_stop_iteration"])
            writer.flush()

    def _finish(self, folder, rows) -> List[dict]:
        rows = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
        if folder is not None:
            walls = {r["level"]: r.get("wall_seconds", 0.0) for r in rows}
            folder.write_summary(rows, wall_seconds=sum(walls.values()))
            from tf_lottery.plots import plot_accuracy_vs_remaining
            plot_accuracy_vs_remaining(rows, folder.file("accuracy_vs_remaining.png"))
        return rows


@gin.configurable
def run_imp(**kwargs) -> List[dict]:
    """``IterativeMagnitudePruning(**kwargs).run()``."""
    return IterativeMagnitudePruning(**kwargs).run()
