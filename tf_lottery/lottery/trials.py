"""Trials of an IMP experiment: N seeds, one run folder each, and their summary.

``IterativeMagnitudePruning(..., trials=N)`` with N > 1 runs trial i (0..N-1) with seed
``seed + i`` into ``output_dir/trial_<i>``, a whole IMP run folder
(``tf_lottery.lottery.results``) that resumes on its own: a trial whose levels are all
finished is skipped, a partly finished one resumes at its first unfinished level. Then::

    output_dir/
      .tf_lottery_run, run.json (the run's config with "trials": N), config.gin
      trial_<i>/                  one run folder per trial
      summary.json                per level and kind: mean, std, min and max over trials of
                                  every metric (``aggregate``), and every trial's rows
      summary.csv                 the aggregate rows
      accuracy_vs_remaining.png   the mean with a min-max band, early-stopping iteration below

Running a finished experiment again reads it back and writes nothing.
"""
import logging
import os
from typing import List, Mapping, Optional, Sequence

import gin
import numpy as np

from tf_lottery._io import gfile
from tf_lottery._keras import keras
from tf_lottery.lottery import results

log = logging.getLogger("tf_lottery")

# the per-trial row figures that get mean, std, min and max
METRICS = ("remaining", "test_accuracy", "early_stop_iteration", "early_stop_test_accuracy",
           "early_stop_val_loss", "best_val_accuracy", "iterations", "fit_seconds")
STATISTICS = ("", "_std", "_min", "_max")
SUMMARY_KEYS = ("level", "kind", "trials") + tuple(
    m + s for m in METRICS for s in STATISTICS)
STATISTICS_NOTE = ("<metric>: mean over trials; <metric>_std: sample standard deviation "
                   "(ddof=1, 0 for one trial); <metric>_min, <metric>_max: range; trials "
                   "with no value (None) are left out")
BAND = "min-max"


def _statistics(values: Sequence) -> dict:
    """Mean, sample std (ddof=1; 0.0 for one value), min and max of the non-None
    ``values``, keyed "", "_std", "_min", "_max" (all None if there is no value)."""
    present = np.asarray([v for v in values if v is not None], np.float64)
    if present.size == 0:
        return {s: None for s in STATISTICS}
    std = float(np.std(present, ddof=1)) if present.size > 1 else 0.0
    return {"": float(np.mean(present)), "_std": std, "_min": float(np.min(present)),
            "_max": float(np.max(present))}


def aggregate(rows_per_trial: Sequence[Sequence[Mapping]]) -> List[dict]:
    """One row per (level, kind) over the trials' summary rows, in first-seen order.

    Args:
      rows_per_trial: for each trial, its rows as ``IterativeMagnitudePruning.run``
        returns them (``level``, ``kind`` and the figures in ``METRICS``).

    Returns:
      Rows with ``level``, ``kind``, ``trials`` (how many trials have that level and
      kind) and, for every metric m of ``METRICS``: ``m`` (the mean), ``m_std`` (sample
      standard deviation, ddof=1; 0.0 for one trial), ``m_min``, ``m_max``.
    """
    order, groups = [], {}
    for rows in rows_per_trial:
        for row in rows:
            key = (int(row["level"]), row["kind"])
            if key not in groups:
                order.append(key)
                groups[key] = []
            groups[key].append(row)
    out = []
    for level, kind in order:
        group = groups[(level, kind)]
        row = {"level": level, "kind": kind, "trials": len(group)}
        for metric in METRICS:
            stats = _statistics([r.get(metric) for r in group])
            row.update({metric + s: stats[s] for s in STATISTICS})
        out.append(row)
    return out


def trial_dir(output_dir: str, trial: int) -> str:
    """The run folder of trial ``trial`` inside ``output_dir``."""
    return os.path.join(output_dir, f"trial_{trial}")


def trial_runner(runner, trial: int):
    """The single-seed ``IterativeMagnitudePruning`` of trial ``trial`` of ``runner``: its
    arguments with seed ``runner.seed + trial`` and ``output_dir/trial_<trial>``."""
    output_dir = None if runner.output_dir is None else trial_dir(runner.output_dir, trial)
    return type(runner)(**dict(runner._arguments, seed=runner.seed + trial,
                               output_dir=output_dir, trials=1))


def _finished(trial) -> Optional[dict]:
    """The summary of a trial whose run folder is finished (checked against its config),
    else None."""
    path = trial.output_dir
    if path is None or not gfile.exists(os.path.join(path, "summary.json")):
        return None
    if results.finished_levels(path, trial.levels) < trial.levels:
        return None
    results.RunDirectory(path, trial.config(), trial.overwrite)  # refuses a different run
    return results.read_json(os.path.join(path, "summary.json"))


def title(runner) -> str:
    """"<model> on <dataset>, <N> trials": the model function's name, the gin-bound
    ``data.name`` (else "the given data")."""
    model = getattr(runner.model_fn, "__qualname__", None) or type(runner.model_fn).__name__
    try:
        dataset = gin.query_parameter("data.name")
    except ValueError:
        dataset = "the given data"
    return f"{model} on {dataset}, {runner.trials} trials"


def run_trials(runner) -> List[dict]:
    """Runs (or resumes) every trial of ``runner`` (``runner.trials`` > 1); returns the
    aggregate rows (see ``aggregate``), and writes the summary and plot into
    ``runner.output_dir`` when it is set."""
    folder = None
    if runner.output_dir:
        folder = results.RunDirectory(runner.output_dir,
                                      dict(runner.config(), trials=runner.trials),
                                      runner.overwrite)
    per_trial, walls, computed = [], [], False
    for i in range(runner.trials):
        trial = trial_runner(runner, i)
        summary = _finished(trial)
        if summary is not None:
            log.info("trial %d of %d: finished, skipped", i + 1, runner.trials)
            rows = summary["rows"]
        else:
            if runner.verbose >= 1:
                print(f"trial {i + 1} of {runner.trials} (seed {trial.seed})", flush=True)
            keras.backend.clear_session()  # layer names as in a fresh process
            rows = trial.run()
            runner.timings += trial.timings
            computed = True
        per_trial.append(rows)
        walls.append(sum({r["level"]: r.get("wall_seconds") or 0.0 for r in rows}.values()))
    rows = aggregate(per_trial)
    if folder is None or (not computed and all(gfile.exists(folder.file(f)) for f in (
            "summary.json", "summary.csv", "accuracy_vs_remaining.png"))):
        return rows
    summary = {"config": folder.config, "trials": runner.trials,
               "seeds": [runner.seed + i for i in range(runner.trials)],
               "statistics": STATISTICS_NOTE, "band": BAND, "rows": rows,
               "trial_rows": [[{k: v for k, v in r.items() if k != "curve"} for r in t]
                              for t in per_trial],
               "wall_seconds": sum(walls),
               "environment": results.environment()}
    results.write_json(folder.file("summary.json"), summary)
    results.write_csv(folder.file("summary.csv"), rows, keys=SUMMARY_KEYS)
    from tf_lottery.plots import plot_trials
    plot_trials(rows, folder.file("accuracy_vs_remaining.png"), title(runner))
    return rows
