"""Figures a person reads: accuracy against weights remaining, per-layer sparsity.

matplotlib with the Agg backend only (no display needed); every PNG is written to a
temporary file beside its target and renamed into place.
"""
import os
import tempfile


def _save_figure(figure, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
    os.close(fd)
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def plot_accuracy_vs_remaining(rows, path: str, title: str = "Iterative magnitude pruning"):
    """The lottery-ticket figure: test accuracy against percent of weights remaining.

    Args:
      rows: summary rows with ``kind``, ``remaining`` (0..1) and ``test_accuracy`` (0..1),
        as ``IterativeMagnitudePruning.run`` returns them.
      path: the PNG to write (atomically).

    One line per kind (ticket, reinit, random_mask, finetune, ...) on a log x axis that
    runs from 100% down, with the dense accuracy (level 0) as a dashed line.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    kinds = []
    for row in rows:
        if row["kind"] not in kinds:
            kinds.append(row["kind"])
    dense = [r["test_accuracy"] for r in rows if r.get("level") == 0]
    for kind in kinds:
        points = sorted(((100 * r["remaining"], 100 * r["test_accuracy"]) for r in rows
                         if r["kind"] == kind), reverse=True)
        if kind != rows[0]["kind"] and dense:
            points = [(100.0, 100 * dense[0])] + points
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3,
                  label=kind)
    if dense:
        axes.axhline(100 * dense[0], color="gray", linestyle="--", linewidth=1, label="dense")
    axes.set_xscale("log")
    axes.invert_xaxis()
    axes.set_xlabel("percent of prunable weights remaining (log scale)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    ticks = [t for t in (100, 51.2, 26.2, 13.4, 6.9, 3.5, 1.8, 0.9, 0.5)
             if t >= min(100 * r["remaining"] for r in rows) * 0.9]
    axes.set_xticks(ticks)
    axes.set_xticklabels([f"{t:g}" for t in ticks])
    figure.tight_layout()
    _save_figure(figure, path)
