"""The gin experiment ``@instability_experiment``: ``tf_lottery.lottery.instability`` swept
over rewind points, one result file per point (resumable), a summary and a plot."""
import logging
from typing import Callable, List, Optional, Sequence, Tuple

import gin

from tf_lottery._keras import tf
from tf_lottery.lottery import instability as lmc
from tf_lottery.lottery import results
from tf_lottery.training import train as training

log = logging.getLogger("tf_lottery")


def _row(result: lmc.Instability) -> dict:
    return {"rewind_step": result.rewind_step, "rewind_iteration": result.rewind_iteration,
            "barrier": result.barrier, "end_errors": list(result.end_errors),
            "loss_barrier": result.path.loss_barrier, "alphas": list(result.path.alphas),
            "errors": list(result.path.errors), "losses": list(result.path.losses or [])}


def _result(row: dict) -> lmc.Instability:
    path = lmc.Path(row["alphas"], row["errors"], row["barrier"], row.get("losses"),
                    row.get("loss_barrier"))
    return lmc.Instability(row["rewind_step"], row["rewind_iteration"], path, row["end_errors"])


def _imp_points(imp_dir: str, levels: Optional[Sequence[int]]) -> List[Tuple[str, dict]]:
    """(file name, ``instability`` arguments) for each finished level of the IMP run in
    ``imp_dir``: its masks, its rewind point and the rewind step it used."""
    config = results.read_json(f"{imp_dir}/run.json")
    step = config["rewind_step"]
    step = int(step) if str(step).isdigit() else step
    start = results.read_arrays(f"{imp_dir}/rewind_point.npz")
    if levels is None:
        levels = [L for L in range(int(config["levels"]))
                  if results.gfile.exists(f"{imp_dir}/level_{L}/masks.npz")]
    points = []
    for level in levels:
        masks_file = f"{imp_dir}/level_{level}/masks.npz"
        if not results.gfile.exists(masks_file):
            raise ValueError(f"{masks_file} does not exist: level {level} of that IMP run is "
                             "not finished; list finished levels in instability_experiment.levels")
        masks = results.read_arrays(masks_file)
        remaining = (sum(float(m.sum()) for m in masks.values())
                     / sum(m.size for m in masks.values()))
        points.append((f"level_{level}", {"masks": masks, "start": start, "rewind_step": step,
                                          "level": level, "remaining": remaining}))
    return points


@gin.configurable
def instability_experiment(output_dir: str, overwrite: bool = False,
                           model: Callable = gin.REQUIRED,
                           optimizer: Callable = training.make_optimizer,
                           rewind_steps: Sequence = (0,), iterations: int = gin.REQUIRED,
                           points: int = 30, seed: int = 0, data_seeds: Sequence[int] = (1, 2),
                           masks_file: Optional[str] = None, start_file: Optional[str] = None,
                           imp_dir: Optional[str] = None, levels: Optional[Sequence[int]] = None,
                           max_steps: Optional[int] = None, data_dir: Optional[str] = None):
    """Error barrier against rewind point k (Frankle et al. 2020), written to
    ``output_dir``: one JSON file per point (a finished point is not run again),
    ``instability.json`` (rows), ``instability.png`` and the barrier as a TensorBoard scalar.

    Dense by default: ``k_<step>.json`` per rewind step, the plot against k.
    ``masks_file`` (an IMP level's ``masks.npz``) trains that sparse network instead; with
    ``start_file`` (the IMP run's ``rewind_point.npz``) the copies start from it instead of
    training to k, so give the one rewind step that run used. ``imp_dir`` sweeps the IMP
    levels of that run (``levels``, default every finished one), each from the run's
    rewind point and step: ``level_<L>.json`` per level, the plot against weights remaining.
    ``max_steps`` (smoke): runs of ``max_steps`` iterations, rewind points 0 and 1 (the
    levels of ``imp_dir`` as they are), 3 points on the path.
    """
    loaded = training.data(**({"data_dir": data_dir} if data_dir else {}))
    if max_steps:
        iterations, points = int(max_steps), 3
        rewind_steps = (0, 1) if int(max_steps) > 1 else (0,)
    config = {"gin": gin.config_str(), "max_steps": max_steps, "iterations": iterations,
              "rewind_steps": [str(s) for s in rewind_steps]}
    folder = results.RunDirectory(output_dir, config, overwrite)

    def reshuffled(s):  # tf.data: each data order reads the split again, shuffled by s
        return training.data(seed=s, **({"data_dir": data_dir} if data_dir else {})
                             ).train.repeat()

    train = loaded.train if isinstance(loaded.train, tuple) else reshuffled
    test = training._take(loaded.test, int(max_steps)) if max_steps else loaded.test
    kwargs = dict(model_fn=training._model_fn(model, loaded.info), train_data=train,
                  test_data=test, optimizer_fn=optimizer, iterations=int(iterations),
                  batch_size=loaded.batch_size, seed=seed, data_seeds=tuple(data_seeds),
                  points=points)
    if masks_file:
        kwargs["masks"] = results.read_arrays(masks_file)
    if start_file:
        kwargs["start"] = results.read_arrays(start_file)
    todo = (_imp_points(imp_dir, levels) if imp_dir
            else [(f"k_{step}", {"rewind_step": step}) for step in rewind_steps])
    rows = []
    for name, point in todo:
        path = folder.file(f"{name}.json")
        if results.gfile.exists(path):
            rows.append(results.read_json(path))
            continue
        extra = {k: point.pop(k) for k in ("level", "remaining") if k in point}
        row = dict(_row(lmc.instability(**dict(kwargs, **point))), **extra)
        results.write_json(path, row)
        log.info("%s (rewind iteration %d): error barrier %.4f", name, row["rewind_iteration"],
                 row["barrier"])
        rows.append(row)
    if results.gfile.exists(folder.file("instability.json")) and \
            results.read_json(folder.file("instability.json")) == {"rows": rows}:
        return {"instability": rows}  # a finished run is read-only to a repeat
    results.write_json(folder.file("instability.json"), {"rows": rows})
    with tf.summary.create_file_writer(folder.file("tensorboard")).as_default():
        for row in rows:
            tf.summary.scalar("instability/error_barrier", row["barrier"],
                              step=row.get("level", row["rewind_iteration"]))
    label = "ticket" if masks_file or imp_dir else "dense"
    title = (f"Instability: {getattr(model, '__name__', 'model')} on "
             f"{training._bound('data.name')}, {label}")
    if imp_dir:
        lmc.plot_instability_levels(rows, folder.file("instability.png"), title)
    else:
        lmc.plot_instability({label: [_result(r) for r in rows]},
                             folder.file("instability.png"), title)
    return {"instability": rows}
