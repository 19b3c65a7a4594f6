"""Markdown table (and figure) of an IMP experiment with trials, from its run folder.

    python tools/trials_table.py runs/digits_trials                     # the table
    python tools/trials_table.py runs/digits_trials --levels=0,3,6,9,12,15,18,19 \\
        --figure=docs/digits_lenet300100_trials.png --keep=docs/digits_lenet300100_trials.json

Reads ``summary.json`` when the experiment is finished. Otherwise (a run still going, or
stopped) it aggregates the levels every trial folder (``trial_<i>/``, or
``mode_<mode>/trial_<i>/`` for ``@imp_baselines``) has finished so far: the ``trials``
count of a row says how many trials it holds. Cells are test accuracy in percent,
``mean ± std (min-max)`` over trials (sample std). ``--figure`` draws
``tfl.plot_trials``; ``--keep`` writes the aggregate rows (accuracies, early stopping and
weights remaining) as JSON.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


KEEP = ("remaining", "test_accuracy", "early_stop_iteration", "early_stop_test_accuracy")


def _read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _finished_rows(trial_dir):
    rows, level = [], 0
    while os.path.exists(os.path.join(trial_dir, f"level_{level}", "metrics.json")):
        rows += [{k: v for k, v in r.items() if k != "curve"} for r in
                 _read(os.path.join(trial_dir, f"level_{level}", "metrics.json"))["kinds"]]
        level += 1
    return rows


def experiment_rows(run_dir):
    """Aggregate rows of a trials run folder (or of each mode of an ``imp_baselines`` one,
    combined), finished or not; and whether it is complete."""
    from tf_lottery.lottery.trials import aggregate
    from tf_lottery.training.baselines_experiment import combine

    modes = sorted(e for e in os.listdir(run_dir) if e.startswith("mode_"))
    if modes:
        config = _read(os.path.join(run_dir, "run.json"))
        parts = [experiment_rows(os.path.join(run_dir, f"mode_{m}")) for m in config["modes"]]
        return combine([p[0] for p in parts]), all(p[1] for p in parts)
    summary = os.path.join(run_dir, "summary.json")
    if os.path.exists(summary) and "trial_rows" in _read(summary):
        return _read(summary)["rows"], True
    trials = sorted((e for e in os.listdir(run_dir) if e.startswith("trial_")),
                    key=lambda e: int(e.split("_")[1]))
    return aggregate([_finished_rows(os.path.join(run_dir, t)) for t in trials]), False


def _cell(row):
    if row is None or row.get("test_accuracy") is None:
        return ""
    mean, std = 100 * row["test_accuracy"], 100 * (row.get("test_accuracy_std") or 0.0)
    low = 100 * row.get("test_accuracy_min", row["test_accuracy"])
    high = 100 * row.get("test_accuracy_max", row["test_accuracy"])
    return f"{mean:.1f} ± {std:.1f} ({low:.1f}-{high:.1f})"


def markdown(rows, levels=None) -> str:
    """One line per level: weights remaining, trials, then one cell per kind."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    by = {(r["level"], r["kind"]): r for r in rows}
    chosen = sorted({r["level"] for r in rows} if levels is None
                    else set(levels) & {r["level"] for r in rows})
    lines = ["| level | weights remaining | trials | " + " | ".join(kinds) + " |",
             "| --- | --- | --- |" + " --- |" * len(kinds)]
    for level in chosen:
        present = [by.get((level, k)) for k in kinds]
        first = next(r for r in present if r is not None)
        counts = sorted({r["trials"] for r in present if r is not None})
        lines.append(f"| {level} | {100 * first['remaining']:.1f}% | "
                     f"{'/'.join(str(c) for c in counts)} | "
                     + " | ".join(_cell(r) for r in present) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--levels", default=None, help="comma-separated levels to list")
    parser.add_argument("--figure", default=None, help="PNG to draw (tfl.plot_trials)")
    parser.add_argument("--title", default=None, help="figure title")
    parser.add_argument("--keep", default=None, help="JSON file for the aggregate rows")
    args = parser.parse_args(argv)
    rows, complete = experiment_rows(args.run_dir)
    levels = None if args.levels is None else [int(v) for v in args.levels.split(",")]
    print(markdown(rows, levels))
    if not complete:
        print("\n(not finished: the rows hold the levels finished so far)")
    if args.keep:
        kept = [{k: v for k, v in r.items() if k in ("level", "kind", "trials") or
                 k.startswith(KEEP)} for r in rows]
        with open(args.keep, "w", encoding="utf-8") as f:
            json.dump({"run_dir": os.path.basename(os.path.normpath(args.run_dir)),
                       "complete": complete, "rows": kept}, f, indent=0)
            f.write("\n")
    if args.figure:
        from tf_lottery.plots import plot_trials
        plot_trials(rows, args.figure, args.title or os.path.basename(args.run_dir))


if __name__ == "__main__":
    main()
