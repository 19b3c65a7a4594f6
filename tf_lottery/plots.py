"""Figures a person reads: accuracy against weights remaining, per-layer sparsity.

matplotlib with the Agg backend only (no display needed); every PNG is written to a
temporary file beside its target and renamed into place.
"""
from tf_lottery._io import atomic_write


def _save_figure(figure, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def remaining_axis(axes, smallest: float) -> None:
    """Makes ``axes``' x axis the lottery-ticket one: percent of prunable weights
    remaining on a log scale from 100% down to ``smallest`` (percent), ticks at the
    levels of 20% pruning per level."""
    axes.set_xscale("log")
    axes.invert_xaxis()
    axes.set_xlabel("percent of prunable weights remaining (log scale)")
    ticks = [t for t in (100, 51.2, 26.2, 13.4, 6.9, 3.5, 1.8, 0.9, 0.5)
             if t >= smallest * 0.9]
    axes.set_xticks(ticks)
    axes.set_xticklabels([f"{t:g}" for t in ticks])


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
    remaining_axis(axes, min(100 * r["remaining"] for r in rows))
    axes.set_ylabel("test accuracy (%)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    _save_figure(figure, path)


def _sparsity_rows(report_or_masks):
    """[(label, sparsity 0..1, params)] from a report, a masks mapping or a model."""
    from collections.abc import Mapping

    import numpy as np

    if hasattr(report_or_masks, "layers") and hasattr(report_or_masks, "optimizer"):
        from tf_lottery.masking.api import sparsity_report

        report_or_masks = sparsity_report(report_or_masks)
    if isinstance(report_or_masks, Mapping):
        rows = []
        for key, mask in report_or_masks.items():
            values = np.asarray(mask)
            rows.append((str(key), 1.0 - np.count_nonzero(values) / max(values.size, 1),
                         int(values.size)))
        return rows
    rows = []
    for row in report_or_masks:
        if row.get("layer") == "total":
            continue
        label = row["layer"] if row.get("weight") in (None, "", "kernel") else (
            f"{row['layer']}/{row['weight']}")
        rows.append((label, float(row["sparsity"]), int(row.get("params", 0))))
    return rows


def plot_layer_sparsity(report_or_masks, path: str, title: str = "Per-layer sparsity"):
    """Bar chart of the sparsity of every masked weight, in model order (as the RigL
    paper's figure of ResNet-50's ERK / uniform layer sparsities).

    Args:
      report_or_masks: a ``tfl.sparsity_report(model)`` (rows with ``layer``, ``weight``,
        ``sparsity``, ``params``), a mapping ``"layer/weight" -> 0/1 mask`` (e.g.
        ``tfl.get_masks(model)``), or a (sparsified) tf_keras model.
      path: the PNG to write (atomically: temporary file, then rename).
      title: figure title.

    Returns:
      ``path``.

    Bars give the sparsity (%) per weight; the overall sparsity (parameter-weighted) is a
    dashed line. Weights named ``kernel`` are labelled by their layer only.
    """
    from matplotlib.figure import Figure

    rows = _sparsity_rows(report_or_masks)
    if not rows:
        raise ValueError("plot_layer_sparsity: nothing to plot (no masked or prunable weight)")
    labels = [r[0] for r in rows]
    values = [100.0 * r[1] for r in rows]
    params = [r[2] for r in rows]
    width = min(max(6.4, 0.28 * len(rows) + 2.0), 40.0)
    figure = Figure(figsize=(width, 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    positions = list(range(len(rows)))
    axes.bar(positions, values, color="#4C72B0", width=0.8)
    total_params = sum(params)
    if total_params:
        overall = sum(v * p for v, p in zip(values, params)) / total_params
        axes.axhline(overall, color="gray", linestyle="--", linewidth=1,
                     label=f"overall {overall:.1f}%")
        axes.legend(loc="lower right")
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, rotation=90, fontsize=7 if len(rows) > 20 else 8)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    axes.set_ylim(0, 100)
    axes.set_ylabel("sparsity (%)")
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.3)
    figure.tight_layout()
    _save_figure(figure, path)
    return path
