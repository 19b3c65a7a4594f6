"""Writes the README's sparsity-sweep table (and figure) from a ``@sparse_sweep`` run.

    python tools/sweep_table.py runs/digits_sweep                 # prints the markdown

    python tools/sweep_table.py runs/digits_sweep --trials=3 \\
        --keep=docs/digits_lenet300100_rigl_sweep --figure=docs/digits_lenet300100_rigl_sweep.png

``--trials=N`` keeps the first N trials (for a sweep still running: only whole trials
count; it fails if a kept trial is unfinished). ``--keep=PREFIX`` writes ``PREFIX.json``
(summary and cell rows) and ``PREFIX.csv`` (summary rows); ``--figure`` redraws the figure
from the kept rows. Table cells: mean, sample std and min-max of test accuracy in percent.
"""
import argparse
import json
import os
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
os.environ.setdefault("TF_LOTTERY_QUIET", "1")  # before TensorFlow loads (tf_lottery._quiet)


def _cells(sweep: dict, trials):
    cells = sweep["cells"]
    if trials is None:
        return cells
    kept = [c for c in cells if c["trial"] < trials]
    per_trial = {t: sum(c["trial"] == t for c in cells) for t in range(trials)}
    config = sweep["config"]
    full = len(config["methods"]) * len(config["sparsities"]) + int(config["dense"])
    if any(n != full for n in per_trial.values()):
        raise SystemExit(f"sweep_table: trials 0..{trials - 1} are not all finished "
                         f"(cells per trial: {per_trial}); use a smaller --trials")
    return kept


def _pct(row: dict) -> str:
    return (f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} "
            f"({100 * row['min']:.1f}-{100 * row['max']:.1f})")


def markdown(summary, trials: int) -> str:
    """The table: one row per method, one column per sparsity; the dense row in the caption."""
    sparse = [r for r in summary if r["method"] != "dense"]
    methods = list(dict.fromkeys(r["method"] for r in sparse))
    levels = sorted({r["sparsity"] for r in sparse})
    by = {(r["method"], r["sparsity"]): r for r in sparse}
    lines = ["| method | " + " | ".join(f"{100 * s:g}%" for s in levels) + " |",
             "| --- |" + " --- |" * len(levels)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(
            _pct(by[(method, s)]) if (method, s) in by else "" for s in levels) + " |")
    dense = [r for r in summary if r["method"] == "dense"]
    caption = (f"Test accuracy (%), mean ± sample std (min-max) over {trials} trials"
               + (f"; dense: {_pct(dense[0])}." if dense else "."))
    return caption + "\n\n" + "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--keep", default=None)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    with open(os.path.join(args.run_dir, "sweep.json"), encoding="utf-8") as f:
        sweep = json.load(f)
    import tf_lottery  # noqa: F401  (gin registration of the sweep's configurables)
    from tf_lottery.training.sweep import SUMMARY_KEYS, summarise

    cells = _cells(sweep, args.trials)
    summary = summarise(cells)
    trials = len({c["trial"] for c in cells})
    print(markdown(summary, trials), end="")
    if args.keep:
        from tf_lottery.lottery import results

        results.write_json(args.keep + ".json", {"config": sweep["config"],
                                                 "accuracy": sweep["accuracy"],
                                                 "summary": summary, "cells": cells})
        results.write_csv(args.keep + ".csv", summary, SUMMARY_KEYS)
    if args.figure:
        from tf_lottery.sweep_plot import plot_accuracy_vs_sparsity

        title = args.title or (f"LeNet-300-100 on digits, ERK, {trials} "
                               f"trial{'s' if trials > 1 else ''} (band: min-max)")
        plot_accuracy_vs_sparsity(summary, args.figure, title)


if __name__ == "__main__":
    main()
