"""The sparsity-sweep figure: mean test accuracy against sparsity, one line per method with
a band over the trials (as the RigL paper's accuracy-vs-sparsity plots).

matplotlib with the Agg backend only; the PNG is written atomically (``plots._save_figure``).
"""
from typing import Mapping, Sequence

from tf_lottery.plots import _save_figure, first_seen


def plot_accuracy_vs_sparsity(summary: Sequence[Mapping], path: str,
                              title: str = "Test accuracy against sparsity"):
    """Draws ``summary`` rows (``method``, ``sparsity`` 0..1, ``mean``, ``min``, ``max``,
    ``trials``; as ``tf_lottery.training.sweep.summarise`` returns them) to the PNG ``path``.

    The x axis is the percent of weights remaining on a log scale (so 90, 95, 98 and 99%
    sparsity are evenly apart), labelled by sparsity; each method is a line through its
    means with a shaded band from the minimum to the maximum over trials. The ``dense`` row
    (sparsity 0) is a dashed gray line with its band across the whole axis.

    Returns:
      ``path``.
    """
    from matplotlib.figure import Figure

    rows = [r for r in summary if r["method"] != "dense"]
    if not rows:
        raise ValueError("plot_accuracy_vs_sparsity: no sparse row to plot")
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    methods = first_seen(rows, "method")
    remaining = sorted({100.0 * (1.0 - r["sparsity"]) for r in rows}, reverse=True)
    for method in methods:
        points = sorted(((100.0 * (1.0 - r["sparsity"]), r) for r in rows
                         if r["method"] == method), key=lambda p: -p[0])
        x = [p[0] for p in points]
        line, = axes.plot(x, [100.0 * p[1]["mean"] for p in points], marker="o",
                          markersize=3, label=method)
        axes.fill_between(x, [100.0 * p[1]["min"] for p in points],
                          [100.0 * p[1]["max"] for p in points], color=line.get_color(),
                          alpha=0.2, linewidth=0)
    for row in summary:
        if row["method"] == "dense":
            axes.axhline(100.0 * row["mean"], color="gray", linestyle="--", linewidth=1,
                         label="dense")
            axes.axhspan(100.0 * row["min"], 100.0 * row["max"], color="gray", alpha=0.15,
                         linewidth=0)
    axes.set_xscale("log")
    axes.invert_xaxis()
    axes.set_xticks(remaining)
    axes.set_xticklabels([f"{100.0 - r:g}" for r in remaining])
    axes.minorticks_off()
    axes.set_xlabel("sparsity (%), log scale of weights remaining")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    _save_figure(figure, path)
    return path
