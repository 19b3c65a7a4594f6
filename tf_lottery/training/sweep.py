"""The gin experiment ``@sparse_sweep``: test accuracy against sparsity for several sparse
training methods over trials (seeds), as the tables and figures of Evci et al. 2020 (RigL).

Each cell (method, sparsity, trial) is one ``sparse_training`` run (its other arguments come
from the ``sparse_training.*`` bindings) in its own folder under the run folder::

    cells/<method>_<sparsity %>/trial_<k>/   e.g. cells/RigL_99/trial_0 (metrics.json, ...)
    cells/dense/trial_<k>/                   the dense baseline (one per trial)
    sweep.json      config, one row per finished cell, summary rows (mean, std, min, max)
    sweep.csv       the summary rows; sweep_cells.csv: the cell rows
    accuracy_vs_sparsity.png  mean test accuracy against sparsity, band = min..max

A finished cell (its ``metrics.json``) is never trained again, so the same command resumes an
interrupted sweep; the summary is rewritten after every cell that finishes (and not at all by
a repeat of a finished sweep). Cells run trial by trial: an interrupted sweep holds whole
trials first.
"""
import json
import logging
import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import gin
import numpy as np

from tf_lottery._keras import keras, tfmot
from tf_lottery.lottery import results
from tf_lottery.training import sparse_experiment
from tf_lottery.training import train as training

log = logging.getLogger("tf_lottery")

SUMMARY_KEYS = ("method", "sparsity", "trials", "mean", "std", "min", "max")
CELL_KEYS = ("method", "sparsity", "trial", "seed", "test_accuracy", "test_loss",
             "final_sparsity", "fit_seconds", "cell")


def summarise(rows: Sequence[Mapping], key: str = "test_accuracy") -> List[dict]:
    """One summary row per (method, sparsity) of the cell ``rows``, in order of first
    appearance: ``trials`` (how many rows), ``mean``, ``std`` (sample standard deviation,
    ddof=1; 0.0 for one trial), ``min`` and ``max`` of ``row[key]``."""
    groups: Dict[tuple, List[float]] = {}
    for row in rows:
        groups.setdefault((row["method"], float(row["sparsity"])), []).append(float(row[key]))
    out = []
    for (method, sparsity), values in groups.items():
        v = np.asarray(values, dtype=np.float64)
        out.append({"method": method, "sparsity": sparsity, "trials": int(v.size),
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                    "min": float(v.min()), "max": float(v.max())})
    return out


def cell_name(method: str, sparsity: float) -> str:
    """The folder of a cell under ``cells/``: ``RigL_99``, ``SET_98.5``, ``dense``."""
    if method == "dense":
        return "dense"
    return f"{method}_{round(100.0 * float(sparsity), 6):g}"


def _pruning_to(cls, sparsity: float, begin: float, end: float, every: int):
    """``cls`` (a ``GradualMagnitudePruning``) pruning from dense to ``sparsity`` along
    Zhu & Gupta's cubic schedule, every ``every`` steps from ``begin`` to ``end`` (fractions
    of the training steps; the end is moved back to the last pruning step, so the final
    sparsity is reached)."""

    class Pruning(cls):  # pylint: disable=too-few-public-methods
        def __init__(self, schedule=None, *, total_steps: Optional[int] = None, **kwargs):
            del schedule  # a smoke run's schedule: this cell prunes to its own sparsity
            if total_steps is None:
                raise ValueError("sparse_sweep: gradual pruning needs the training length")
            first = int(round(begin * total_steps))
            span = max(1, int(round(end * total_steps)) - first)
            step = max(1, min(int(every), span))
            schedule = tfmot.sparsity.keras.PolynomialDecay(
                initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=first,
                end_step=first + span // step * step, power=3, frequency=step)
            super().__init__(schedule, total_steps=total_steps, **kwargs)

    Pruning.__name__ = Pruning.__qualname__ = cls.__name__
    return Pruning


def _check(methods: Mapping, sparsities: Sequence[float], trials: int,
           prune: Sequence[float]) -> None:
    from tf_lottery import dst

    for name, method in methods.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)) or name == "dense":
            raise ValueError(f"sparse_sweep.methods: {name!r} cannot name a cell folder; use "
                             "letters, digits, '_', '.' or '-' (and not 'dense')")
        if method is not None and not (isinstance(method, type) and issubclass(
                method, dst.MaskUpdateCallback)):
            raise ValueError(f"sparse_sweep.methods[{name!r}] must be a method class (@RigL, "
                             "@SET, @SNFS, @StaticSparse, @GradualMagnitudePruning) or None "
                             f"(static sparse), got {method!r}")
    for s in sparsities:
        if not 0.0 < float(s) < 1.0:
            raise ValueError(f"sparse_sweep.sparsities must lie in (0, 1), got {s}")
    if int(trials) < 1:
        raise ValueError(f"sparse_sweep.trials must be at least 1, got {trials}")
    begin, end, every = prune
    if not (0.0 <= float(begin) < float(end) <= 1.0 and int(every) >= 1):
        raise ValueError(f"sparse_sweep: gradual pruning needs 0 <= prune_begin < prune_end "
                         f"<= 1 (fractions of training) and prune_every >= 1 (steps), got "
                         f"{begin}, {end}, {every}")


def _cells(methods: Mapping, sparsities: Sequence[float], trials: int, dense: bool):
    """(method name, method, sparsity, trial) in run order: trial by trial, dense first."""
    for trial in range(trials):
        if dense:
            yield "dense", None, 0.0, trial
        for sparsity in sparsities:
            for name, method in methods.items():
                yield name, method, float(sparsity), trial


@gin.configurable
def sparse_sweep(output_dir: str, overwrite: bool = False,
                 methods: Mapping[str, Optional[type]] = gin.REQUIRED,
                 sparsities: Sequence[float] = (0.8, 0.9, 0.95, 0.98, 0.99),
                 trials: int = 3, seed: int = 0, dense: bool = True,
                 prune_begin: float = 0.2, prune_end: float = 0.75, prune_every: int = 100,
                 title: Optional[str] = None, max_steps: Optional[int] = None,
                 data_dir: Optional[str] = None, verbose: Optional[int] = None,
                 train_fn: Callable = sparse_experiment.sparse_training) -> List[dict]:
    """Trains every (method, sparsity, trial) cell with ``train_fn`` (``sparse_training``)
    into ``output_dir/cells`` and summarises test accuracy (see the module doc).

    Args:
      methods: name -> method class, e.g. ``{'RigL': @RigL, 'Static': @StaticSparse}``
        (``None``: static sparse without a callback). Sparse-from-scratch methods start at
        the cell's sparsity (``sparse_training.distribution``); a ``GradualMagnitudePruning``
        starts dense and prunes to it.
      sparsities: fractions of masked weights set to zero, each in (0, 1).
      trials: seeds ``seed, seed + 1, ...``; trial k of every method uses seed + k.
      dense: also train the dense model once per trial (row ``dense``, sparsity 0).
      prune_begin, prune_end, prune_every: gradual pruning's cubic schedule (Zhu & Gupta
        2018) prunes every ``prune_every`` steps from ``prune_begin`` to ``prune_end``
        (fractions of the training steps).
      title: the figure's title (default: model and dataset of the cells).
      max_steps: smoke run: one trial of the last sparsity, each cell ``max_steps`` steps.
      verbose: if not None, replaces ``sparse_training.verbose``.

    Returns:
      the summary rows: ``method``, ``sparsity``, ``trials``, ``mean``, ``std``, ``min``,
      ``max`` of the test accuracy (0..1).
    """
    from tf_lottery import dst

    methods = dict(methods)
    sparsities = [float(s) for s in sparsities]
    _check(methods, sparsities, trials, (prune_begin, prune_end, prune_every))
    if max_steps:
        sparsities, trials = sparsities[-1:], 1
    config = {"experiment": "sparse_sweep", "gin": gin.config_str(), "max_steps": max_steps,
              "methods": {k: None if m is None else m.__name__ for k, m in methods.items()},
              "sparsities": sparsities, "trials": int(trials), "seed": int(seed),
              "dense": bool(dense), "prune": [prune_begin, prune_end, prune_every]}
    folder = results.RunDirectory(output_dir, config, overwrite)
    rows, changed = [], False
    for name, method, sparsity, trial in _cells(methods, sparsities, int(trials), dense):
        cell = f"cells/{cell_name(name, sparsity)}/trial_{trial}"
        path = folder.file(cell)
        metrics_file = os.path.join(path, "metrics.json")
        trained = not results.gfile.exists(metrics_file)
        if trained:
            kwargs = {"sparsity": sparsity, "updater": method}
            if isinstance(method, type) and issubclass(method, dst.GradualMagnitudePruning):
                kwargs = {"sparsity": 0.0,
                          "updater": _pruning_to(method, sparsity, prune_begin, prune_end,
                                                 prune_every)}
            optional = {"max_steps": max_steps, "data_dir": data_dir, "verbose": verbose}
            kwargs.update({k: v for k, v in optional.items() if v is not None})
            train_fn(output_dir=path, seed=int(seed) + trial, **kwargs)
            keras.backend.clear_session()
        metrics = results.read_json(metrics_file)
        rows.append({"method": name, "sparsity": sparsity, "trial": trial,
                     "seed": int(seed) + trial, "test_accuracy": metrics["test_accuracy"],
                     "test_loss": metrics.get("test_loss"),
                     "final_sparsity": metrics.get("sparsity", 0.0),
                     "fit_seconds": metrics.get("fit_seconds"), "cell": cell})
        if trained:
            changed |= _write_summary(folder, config, rows)
            log.info("%s (seed %d): test accuracy %.4f", cell, int(seed) + trial,
                     metrics["test_accuracy"])
    changed |= _write_summary(folder, config, rows)
    summary = summarise(rows)
    plot = folder.file("accuracy_vs_sparsity.png")
    if changed or not results.gfile.exists(plot):
        from tf_lottery.sweep_plot import plot_accuracy_vs_sparsity

        plot_accuracy_vs_sparsity(summary, plot, title or _title(int(trials)))
    return summary


def _title(trials: int) -> str:
    model = training._bound("sparse_training.model")
    model = getattr(model, "selector", str(model)).split(".")[-1]
    distribution = training._bound("sparse_training.distribution", "erk")
    return (f"{model} on {training._bound('data.name')}, {str(distribution).upper()}, "
            f"{trials} trial{'s' if trials > 1 else ''} (band: min-max)")


def _write_summary(folder: results.RunDirectory, config: dict, rows: List[dict]) -> bool:
    """Writes ``sweep.json``, ``sweep.csv`` and ``sweep_cells.csv`` unless ``sweep.json``
    already holds these rows; returns whether it wrote."""
    content = {"config": config, "accuracy": "test accuracy (0..1); std: sample (ddof=1)",
               "summary": summarise(rows), "cells": rows}
    path = folder.file("sweep.json")
    content = json.loads(json.dumps(content))
    if results.gfile.exists(path) and results.read_json(path) == content:
        return False
    results.write_json(path, content)
    results.write_csv(folder.file("sweep.csv"), content["summary"], SUMMARY_KEYS)
    results.write_csv(folder.file("sweep_cells.csv"), rows, CELL_KEYS)
    return True
