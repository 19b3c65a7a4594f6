"""Instability analysis (Frankle, Dziugaite, Roy & Carbin 2020, "Linear Mode Connectivity
and the Lottery Ticket Hypothesis"): is training from iteration k stable to SGD noise?

Train a network to iteration k (theta_k), train two copies of theta_k to the end with
different data orders, and evaluate test error on the straight line between the two
results. The *error barrier* (the paper's instability) is the largest error on the path
minus the mean of the two ends' errors; a barrier near 0 means the two runs land in one
linearly connected minimum, and the k from which that holds is the rewind point IMP needs.

Everything but the masks is interpolated, BatchNormalization's moving mean and variance
included (the straight line in the full state, as open_lth's checkpoints interpolate);
the statistics are not recomputed for the interpolated weights. The children start as
this library's rewinding does (``tf_lottery.lottery.rewind``): the optimizer starts
fresh at iteration k, so a learning-rate schedule continues from k.
"""
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.lottery.evaluation import Evaluator
from tf_lottery.lottery.rewind import Step, parse_step, rewind, snapshot
from tf_lottery.masking.api import set_masks, sparsify


def interpolate(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray],
                alpha: float) -> Dict[str, np.ndarray]:
    """``(1 - alpha) * a + alpha * b`` entry by entry; alpha 0 gives ``a`` and 1 gives
    ``b`` exactly, and so does every alpha where ``a`` and ``b`` are equal (no rounding
    off the line between two identical networks)."""
    if set(a) != set(b):
        raise ValueError("the two weight sets name different variables: they come from "
                         "different architectures")
    out = {}
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        out[k] = np.where(x == y, x, (1.0 - alpha) * x + alpha * y).astype(x.dtype)
    return out


def error_barrier(errors: Sequence[float]) -> float:
    """The largest error on the path minus the mean of its two ends' errors (>= 0 when the
    ends are on the path)."""
    errors = [float(e) for e in errors]
    if len(errors) < 2:
        raise ValueError("a path needs at least its two ends")
    return max(errors) - 0.5 * (errors[0] + errors[-1])


class Path(NamedTuple):
    """Test error along the line from one network (alpha 0) to another (alpha 1), and the
    mean test loss (``losses``; ``loss_barrier`` is ``error_barrier`` of them, a finer
    signal than the error on a small test set)."""
    alphas: List[float]
    errors: List[float]
    barrier: float
    losses: Optional[List[float]] = None
    loss_barrier: Optional[float] = None


def linear_path(model, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], test_data,
                points: int = 30, loss: Optional[Callable] = None,
                batch_size: Optional[int] = None) -> Path:
    """Test error (1 - accuracy; ties between logits go to the lower class) of ``model``
    holding ``interpolate(a, b, alpha)`` for ``points`` evenly spaced alphas in [0, 1].

    ``a`` and ``b`` are ``rewind.snapshot``s of ``model`` (every variable but the masks);
    the model's own state is put back afterwards. ``test_data``: ``(x, y)`` arrays, a
    batched ``tf.data.Dataset``, or an ``Evaluator`` of them (reused, so its compiled
    function is too; ``loss`` and ``batch_size`` are then its own).
    """
    if points < 2:
        raise ValueError(f"points must be >= 2 (the two ends), got {points}")
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    evaluate = (test_data if isinstance(test_data, Evaluator)
                else Evaluator(test_data, loss, batch_size))
    saved = snapshot(model)
    alphas = [float(x) for x in np.linspace(0.0, 1.0, points)]
    errors, losses = [], []
    try:
        for alpha in alphas:
            rewind(model, interpolate(a, b, alpha))
            scores = evaluate(model)
            errors.append(1.0 - scores["accuracy"])
            losses.append(scores["loss"])
    finally:
        rewind(model, saved)
    return Path(alphas, errors, error_barrier(errors), losses, error_barrier(losses))


class Instability(NamedTuple):
    """One rewind point's result: ``barrier`` = ``path.barrier``; ``end_errors`` are the
    two trained networks' test errors, evaluated before any interpolation."""
    rewind_step: str
    rewind_iteration: int
    path: Path
    end_errors: List[float]

    @property
    def barrier(self) -> float:
        return self.path.barrier


def _order(train_data, batch_size: int, seed: int) -> tf.data.Dataset:
    """The training batches in the data order of ``seed``, repeated without end."""
    if callable(train_data):
        return train_data(seed)
    x, y = train_data
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).repeat()


def _fit(model, optimizer_fn, loss, train_data, batch_size: int, iterations: int,
         start: int, start_values, seed: int) -> None:
    """Trains ``model`` from ``start_values`` (at iteration ``start``) for ``iterations``
    in the data order of ``seed`` (seeded first: the order depends on the global seed)."""
    keras.utils.set_random_seed(seed)
    data = _order(train_data, batch_size, seed)
    optimizer = optimizer_fn()
    model.compile(optimizer=optimizer, loss=loss)
    optimizer.build(model.trainable_variables)
    rewind(model, start_values, optimizer, start)
    if iterations > 0:
        model.fit(data, epochs=1, steps_per_epoch=iterations, verbose=0)


def instability(model_fn: Callable, rewind_step: Step, train_data, test_data,
                optimizer_fn: Callable, iterations: int, batch_size: int = 60,
                masks: Optional[Mapping[str, np.ndarray]] = None,
                start: Optional[Mapping[str, np.ndarray]] = None, seed: int = 0,
                data_seeds: Sequence[int] = (1, 2), points: int = 30,
                loss: Optional[Callable] = None,
                steps_per_epoch: Optional[int] = None) -> Instability:
    """The error barrier between two trainings of theta_k that differ only in data order.

    Args:
      model_fn: builds the (unsparsified) tf_keras model, ending in logits.
      rewind_step: k, in ``parse_step`` syntax (``0``, ``"100it"``, ``"2ep"``).
      train_data: ``(x, y)`` arrays (shuffled per data seed) or a callable
        ``seed -> tf.data.Dataset`` of repeated training batches in that seed's order.
      test_data: ``(x, y)`` arrays or a batched ``tf.data.Dataset``.
      optimizer_fn: returns a fresh optimizer (schedules count from iteration 0).
      iterations: total training iterations T; each copy trains T - k of them.
      masks: weight key -> mask (an IMP level's ``masks.npz``), or None for dense.
      start: theta_k as a ``rewind.snapshot`` (IMP's ``rewind_point.npz``); without it,
        the network trains from its initialisation to k with data seed ``seed``.
      seed: seeds the initialisation and the data order up to k.
      data_seeds: the two copies' data orders; equal seeds give identical networks.
      points: points on the path, ends included.
      loss: default sparse categorical cross-entropy on logits.
      steps_per_epoch: to convert ``"2ep"``; default ceil(len(x) / batch_size).
    """
    if len(data_seeds) != 2:
        raise ValueError(f"data_seeds must name two data orders, got {data_seeds}")
    if steps_per_epoch is None and not callable(train_data):
        steps_per_epoch = -(-len(train_data[0]) // batch_size)
    k = parse_step(rewind_step, steps_per_epoch)
    if k > iterations:
        raise ValueError(f"rewind step {rewind_step!r} ({k} iterations) is past the end of "
                         f"training ({iterations} iterations)")
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(seed)
    model = sparsify(model_fn(), 0.0)
    if masks is not None:
        set_masks(model, masks)
    if start is None:
        _fit(model, optimizer_fn, loss, train_data, batch_size, k, 0, snapshot(model), seed)
    theta_k = snapshot(model) if start is None else dict(start)
    evaluate = Evaluator(test_data, loss)
    ends, end_errors = [], []
    for data_seed in data_seeds:
        _fit(model, optimizer_fn, loss, train_data, batch_size, iterations - k, k, theta_k,
             data_seed)
        ends.append(snapshot(model))
        end_errors.append(1.0 - evaluate(model)["accuracy"])
    path = linear_path(model, ends[0], ends[1], evaluate, points)
    return Instability(str(rewind_step), k, path, end_errors)


def instability_sweep(rewind_steps: Sequence[Step], **kwargs) -> List[Instability]:
    """``instability`` at each rewind point (same other arguments, e.g. one IMP level's
    ``masks``); sweep IMP levels by calling it once per level's masks."""
    return [instability(rewind_step=step, **kwargs) for step in rewind_steps]


def plot_instability(curves: Mapping[str, Sequence[Instability]], path: str,
                     title: str = "Instability analysis", ymax: Optional[float] = None) -> None:
    """Error barrier (percentage points) against rewind iteration k, one line per entry
    of ``curves`` (label -> sweep, e.g. ``{"dense": ..., "ticket 20%": ...}``), on a
    symlog x axis (k = 0 included); ``ymax`` (percentage points) fixes the y range from 0
    so that barriers of a test image or two do not fill the figure. Written atomically
    as PNG."""
    from matplotlib.figure import Figure

    from tf_lottery.plots import _save_figure

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    for label, sweep in curves.items():
        points = sorted((r.rewind_iteration, 100 * r.barrier) for r in sweep)
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axes.set_xscale("symlog", linthresh=1)
    axes.set_xlabel("rewind iteration k (symlog)")
    axes.set_ylabel("test error barrier (percentage points)")
    if ymax is not None:
        axes.set_ylim(0.0, float(ymax))
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    _save_figure(figure, path)


def plot_instability_levels(rows: Sequence[Mapping], path: str,
                            title: str = "Instability of IMP tickets") -> None:
    """Error barrier (percentage points) against percent of weights remaining (log axis,
    100% on the left), one point per IMP level; ``rows`` have ``remaining`` (0..1) and
    ``barrier``. Written atomically as PNG."""
    from matplotlib.figure import Figure

    from tf_lottery.plots import _save_figure, remaining_axis

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axes = figure.add_subplot(1, 1, 1)
    points = sorted(((100 * r["remaining"], 100 * r["barrier"]) for r in rows), reverse=True)
    axes.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    remaining_axis(axes, min(p[0] for p in points))
    axes.set_ylabel("test error barrier (percentage points)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    _save_figure(figure, path)
