"""The README's Keras 3 digits table and figure: the digits main job on tf_keras and on
Keras 3 (TensorFlow and JAX backends), side by side.

    python tools/keras3_digits_table.py tf_keras=RUN_A keras3_tensorflow=RUN_B \
        keras3_jax=RUN_C --readme=README.md --figure=docs/digits_lenet300100_imp_keras3.png \
        --keep_summaries=docs/keras3

Each RUN is the --output_dir of a finished IMP run (``summary.json``); the section between
``<!-- keras3-digits:begin -->`` and ``<!-- keras3-digits:end -->`` of the README is replaced.
``benchmarks/digits_keras3_runs.sh`` makes the runs.
"""
import argparse
import json
import os
import re
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

LABELS = {"tf_keras": "tf_keras", "keras3_tensorflow": "Keras 3 + TF",
          "keras3_jax": "Keras 3 + JAX"}


def _load(path):
    """A run's ``summary.json``; for a run still in progress, its finished levels (from
    ``level_<i>/metrics.json``) with ``"partial": True``."""
    summary = os.path.join(path, "summary.json")
    if os.path.exists(summary):
        with open(summary, encoding="utf-8") as f:
            return json.load(f)
    rows, wall, level = [], 0.0, 0
    while os.path.exists(os.path.join(path, f"level_{level}", "metrics.json")):
        with open(os.path.join(path, f"level_{level}", "metrics.json"), encoding="utf-8") as f:
            metrics = json.load(f)
        rows += [{k: v for k, v in r.items() if k != "curve"} for r in metrics["kinds"]]
        wall += metrics["kinds"][0]["wall_seconds"]
        level += 1
    if not rows:
        raise SystemExit(f"{path}: no finished level")
    return {"rows": rows, "wall_seconds": wall, "partial": True}


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def table(runs) -> str:
    """Markdown: wall times, then one row per level with ticket / reinit per flavour."""
    names = list(runs)
    lines = ["| | " + " | ".join(LABELS.get(n, n) for n in names) + " |",
             "| --- | " + " | ".join("---:" for _ in names) + " |",
             "| wall time (h:mm:ss) | " + " | ".join(
                 _clock(runs[n]["wall_seconds"]) + (
                     f" ({1 + max(r['level'] for r in runs[n]['rows'])} levels, in progress)"
                     if runs[n].get("partial") else "") for n in names) + " |",
             "| fit time, all levels (s) | " + " | ".join(
                 f"{sum(r['fit_seconds'] for r in runs[n]['rows']):.0f}" for n in names) + " |"]
    out = ["\n".join(lines), ""]
    head = "| level | remaining | " + " | ".join(
        f"{LABELS.get(n, n)} ticket | {LABELS.get(n, n)} reinit" for n in names) + " |"
    out += [head, "| ---: | ---: | " + " | ".join("---: | ---:" for _ in names) + " |"]
    by = {n: {(r["level"], r["kind"]): r for r in runs[n]["rows"]} for n in names}
    levels = sorted({r["level"] for n in names for r in runs[n]["rows"]})
    for level in levels:
        remaining = next(by[n][(level, "ticket")]["remaining"] for n in names
                         if (level, "ticket") in by[n])
        cells = []
        for n in names:
            ticket, reinit = by[n].get((level, "ticket")), by[n].get((level, "reinit"))
            cells.append(f"{100 * ticket['test_accuracy']:.2f}%" if ticket else "")
            cells.append(f"{100 * reinit['test_accuracy']:.2f}%" if reinit else "")
        out.append(f"| {level} | {100 * remaining:.1f}% | " + " | ".join(cells) + " |")
    return "\n".join(out)


def figure(runs, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2))
    styles = {"tf_keras": ("0.6", ":"), "keras3_tensorflow": ("C0", "-"),
              "keras3_jax": ("C3", "--")}
    for name, summary in runs.items():
        color, line = styles.get(name, ("C2", "-."))
        for kind, marker in (("ticket", "o"), ("reinit", "x")):
            rows = sorted((r for r in summary["rows"] if r["kind"] == kind),
                          key=lambda r: -r["remaining"])
            ax.plot([100 * r["remaining"] for r in rows],
                    [100 * r["test_accuracy"] for r in rows], color=color, linestyle=line,
                    marker=marker, markersize=4, label=f"{LABELS.get(name, name)} {kind}")
    ax.set_xscale("log")
    ax.set_xticks([100, 50, 20, 10, 5, 2])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LeNet-300-100 on digits: lottery tickets on tf_keras and Keras 3")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR (tf_keras, keras3_tensorflow, "
                        "keras3_jax)")
    parser.add_argument("--readme")
    parser.add_argument("--figure")
    parser.add_argument("--keep_summaries", help="copy each summary.json here as NAME.json")
    args = parser.parse_args(argv)
    runs = {}
    items = sorted(args.runs, key=lambda i: list(LABELS).index(i.partition("=")[0])
                   if i.partition("=")[0] in LABELS else len(LABELS))
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"{item!r}: give NAME=RUN_DIR")
        runs[name] = _load(path)
        if args.keep_summaries:
            os.makedirs(args.keep_summaries, exist_ok=True)
            with open(os.path.join(args.keep_summaries, f"digits_imp_{name}.json"), "w",
                      encoding="utf-8") as f:
                json.dump(runs[name], f, indent=2)
                f.write("\n")
    text = table(runs)
    print(text)
    if args.figure:
        figure(runs, args.figure)
    if args.readme:
        with open(args.readme, encoding="utf-8") as f:
            readme = f.read()
        begin, end = "<!-- keras3-digits:begin -->", "<!-- keras3-digits:end -->"
        if begin not in readme or end not in readme:
            raise SystemExit(f"{args.readme} has no {begin} ... {end} section")
        readme = re.sub(re.escape(begin) + ".*?" + re.escape(end),
                        lambda _: f"{begin}\n{text}\n{end}", readme, flags=re.S)
        with open(args.readme + ".tmp", "w", encoding="utf-8") as f:
            f.write(readme)
        os.replace(args.readme + ".tmp", args.readme)


if __name__ == "__main__":
    main()
