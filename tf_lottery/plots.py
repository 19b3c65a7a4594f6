"""Figures a person reads: accuracy against weights remaining (one run, or trials with
bands), per-layer sparsity.

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
    kinds = _kinds(rows)
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


def first_seen(rows, key: str = "kind"):
    """The distinct ``row[key]`` values of ``rows`` in the order they first appear (one line
    per value in a figure)."""
    return list(dict.fromkeys(row[key] for row in rows))


def _kinds(rows):
    return first_seen(rows, "kind")


def _log_remaining_axis(axes, rows) -> None:
    from matplotlib.ticker import NullFormatter

    axes.set_xscale("log")
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.invert_xaxis()
    ticks = [t for t in (100, 51.2, 26.2, 13.4, 6.9, 3.5, 1.8, 0.9, 0.5)
             if t >= min(100 * r["remaining"] for r in rows) * 0.9]
    axes.set_xticks(ticks)
    axes.set_xticklabels([f"{t:g}" for t in ticks])
    axes.grid(True, which="both", alpha=0.3)


def plot_trials(rows, path: str, title: str = "Iterative magnitude pruning"):
    """The lottery-ticket figure over trials: for each kind, the mean test accuracy with a
    min-max band (top) and the mean early-stopping iteration with a min-max band (bottom,
    when the rows have one), against percent of weights remaining on a log axis.

    Args:
      rows: aggregate rows (``tf_lottery.lottery.trials.aggregate``): ``level``, ``kind``,
        ``trials``, ``remaining`` (mean, 0..1), ``test_accuracy`` (mean, 0..1) with
        ``test_accuracy_min`` / ``_max``, and ``early_stop_iteration`` (mean) with
        ``early_stop_iteration_min`` / ``_max`` (None without validation data).
      path: the PNG to write (atomically).
      title: the figure title (model, dataset and trials); "mean, band: min-max over N
        trials" is added below it.

    Returns:
      ``path``.
    """
    from matplotlib.figure import Figure

    early = any(r.get("early_stop_iteration") is not None for r in rows)
    figure = Figure(figsize=(6.4, 7.2 if early else 4.4), dpi=120)
    panels = [figure.add_subplot(2 if early else 1, 1, 1)]
    if early:
        panels.append(figure.add_subplot(2, 1, 2, sharex=panels[0]))
    trials = max(int(r.get("trials", 1)) for r in rows)
    main = rows[0]["kind"]
    dense = [r for r in rows if r.get("level") == 0]
    panel_keys = [("test_accuracy", 100.0, "test accuracy (%)"),
                  ("early_stop_iteration", 1.0, "early-stopping iteration")][:len(panels)]
    for axes, (key, scale, label) in zip(panels, panel_keys):
        for index, kind in enumerate(_kinds(rows)):
            points = [r for r in rows if r["kind"] == kind and r.get(key) is not None]
            if kind != main and dense and dense[0].get(key) is not None:
                points = dense[:1] + points  # controls start from the dense network
            points.sort(key=lambda r: -r["remaining"])
            if not points:
                continue
            x = [100 * r["remaining"] for r in points]
            color = f"C{index}"
            axes.plot(x, [scale * r[key] for r in points], marker="o", markersize=3,
                      color=color, label=kind)
            low = [scale * r.get(key + "_min", r[key]) for r in points]
            high = [scale * r.get(key + "_max", r[key]) for r in points]
            axes.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)
        axes.set_ylabel(label)
        _log_remaining_axis(axes, rows)
    if dense and dense[0].get("test_accuracy") is not None:
        panels[0].axhline(100 * dense[0]["test_accuracy"], color="gray", linestyle="--",
                          linewidth=1, label="dense")
    panels[0].legend()
    panels[-1].set_xlabel("percent of prunable weights remaining (log scale)")
    panels[0].set_title(f"{title}\nmean, band: min-max over {trials} trial"
                        f"{'s' if trials != 1 else ''}", fontsize=10)
    figure.tight_layout()
    _save_figure(figure, path)
    return path


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
