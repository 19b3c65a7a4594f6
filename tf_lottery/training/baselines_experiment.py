"""The gin experiment ``@imp_baselines``: IMP's main line under several modes (the ticket,
pruning & fine-tuning of Liu et al. 2021, learning-rate rewinding of Renda et al. 2020) on
the same network, data and per-level iterations, each with its trials, and one summary and
figure comparing them.

Layout of ``output_dir``: ``mode_<mode>/`` (an ``@imp_experiment`` run folder, with
``trial_<i>/`` folders when ``train.trials`` > 1), ``summary.json`` / ``summary.csv`` (the
modes' rows together; the dense level 0 once, from the first mode, since every mode trains
it alike) and ``accuracy_vs_remaining.png``.
"""
import json
import logging
import os
from typing import Optional, Sequence

import gin

from tf_lottery.lottery import results
from tf_lottery.lottery.imp import MODES
from tf_lottery.training import train as training

log = logging.getLogger("tf_lottery")


def combine(rows_per_mode: Sequence[Sequence[dict]]) -> list:
    """The modes' rows as one table: level 0 from the first mode only, then every other
    row in order (each mode's main line has ``kind`` = its mode)."""
    out = []
    for index, rows in enumerate(rows_per_mode):
        out += [r for r in rows if index == 0 or r["level"] != 0]
    return out


@gin.configurable
def imp_baselines(output_dir: str, overwrite: bool = False,
                  modes: Sequence[str] = ("ticket", "finetune", "lr_rewind"),
                  max_steps: Optional[int] = None, data_dir: Optional[str] = None,
                  verbose: Optional[int] = None, trials: Optional[int] = None):
    """Runs ``imp_experiment`` once per mode in ``modes`` into ``output_dir/mode_<mode>``
    (controls only for ``"ticket"``, as ``IterativeMagnitudePruning.controls`` binds them;
    ``trials``, ``max_steps``, ``data_dir``, ``verbose`` as ``imp_experiment``'s), then
    writes the comparison (see the module doc). Returns ``{"rows": ...}``."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"imp_baselines.modes {list(modes)}: use some of {MODES}")
    config = {"gin": gin.config_str(), "modes": list(modes), "max_steps": max_steps,
              "trials": trials}
    folder = results.RunDirectory(output_dir, config, overwrite)
    per_mode = []
    for mode in modes:
        overrides = {"mode": mode} if mode == "ticket" else {"mode": mode, "controls": ()}
        result = training.imp_experiment(
            os.path.join(output_dir, f"mode_{mode}"), overwrite=overwrite, max_steps=max_steps,
            data_dir=data_dir, verbose=verbose, trials=trials, overrides=overrides)
        per_mode.append(result["rows"])
    rows = combine(per_mode)
    written = [folder.file(f) for f in ("summary.json", "summary.csv",
                                        "accuracy_vs_remaining.png")]
    if all(results.gfile.exists(f) for f in written) and results.read_json(written[0]).get(
            "rows") == json.loads(json.dumps(rows, default=str)):
        return {"rows": rows}  # a finished run is read-only to a repeat
    results.write_json(written[0], {"config": folder.config, "modes": list(modes),
                                    "rows": rows, "environment": results.environment()})
    results.write_csv(written[1], rows, keys=("level", "kind", "trials", "remaining",
                                              "test_accuracy"))
    from tf_lottery.plots import plot_trials

    model = str(training._bound("imp_experiment.model", "model")).lstrip("@").rstrip("()")
    count = trials or 1
    plot_trials(rows, written[2], f"{model} on {training._bound('data.name')}, {count} "
                f"trial{'s' if count != 1 else ''}: {', '.join(modes)}")
    return {"rows": rows}
