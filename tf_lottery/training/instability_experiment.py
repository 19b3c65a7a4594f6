"""The gin experiment ``@instability_experiment``: ``tf_lottery.lottery.instability`` swept
over rewind points, one result file per point (resumable), a summary and a plot."""
import logging
from typing import Callable, Optional, Sequence

import gin

from tf_lottery._keras import tf
from tf_lottery.lottery import instability as lmc
from tf_lottery.lottery import results
from tf_lottery.training import train as training

log = logging.getLogger("tf_lottery")


def _row(result: lmc.Instability) -> dict:
    return {"rewind_step": result.rewind_step, "rewind_iteration": result.rewind_iteration,
            "barrier": result.barrier, "end_errors": list(result.end_errors),
            "alphas": list(result.path.alphas), "errors": list(result.path.errors)}


def _result(row: dict) -> lmc.Instability:
    path = lmc.Path(row["alphas"], row["errors"], row["barrier"])
    return lmc.Instability(row["rewind_step"], row["rewind_iteration"], path, row["end_errors"])


@gin.configurable
def instability_experiment(output_dir: str, overwrite: bool = False,
                           model: Callable = gin.REQUIRED,
                           optimizer: Callable = training.make_optimizer,
                           rewind_steps: Sequence = (0,), iterations: int = gin.REQUIRED,
                           points: int = 30, seed: int = 0, data_seeds: Sequence[int] = (1, 2),
                           masks_file: Optional[str] = None, start_file: Optional[str] = None,
                           max_steps: Optional[int] = None, data_dir: Optional[str] = None):
    """Error barrier against rewind point k (Frankle et al. 2020), written to
    ``output_dir``: ``k_<step>.json`` per point (a finished point is not run again),
    ``instability.json`` (rows), ``instability.png`` (barrier against k) and the barrier as
    a TensorBoard scalar over k.

    ``masks_file`` (an IMP level's ``masks.npz``) trains that sparse network; with
    ``start_file`` (the IMP run's ``rewind_point.npz``) the copies start from it instead of
    training to k, so give the one rewind step that run used. ``max_steps`` (smoke): runs
    of ``max_steps`` iterations, rewind points 0 and 1, 3 points on the path.
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
    rows = []
    for step in rewind_steps:
        path = folder.file(f"k_{step}.json")
        if results.gfile.exists(path):
            rows.append(results.read_json(path))
            continue
        row = _row(lmc.instability(rewind_step=step, **kwargs))
        results.write_json(path, row)
        log.info("rewind %s (iteration %d): error barrier %.4f", step, row["rewind_iteration"],
                 row["barrier"])
        rows.append(row)
    results.write_json(folder.file("instability.json"), {"rows": rows})
    with tf.summary.create_file_writer(folder.file("tensorboard")).as_default():
        for row in rows:
            tf.summary.scalar("instability/error_barrier", row["barrier"],
                              step=row["rewind_iteration"])
    title = (f"Instability: {getattr(model, '__name__', 'model')} on "
             f"{training._bound('data.name')}" + (", ticket" if masks_file else ", dense"))
    lmc.plot_instability({"ticket" if masks_file else "dense": [_result(r) for r in rows]},
                         folder.file("instability.png"), title)
    return {"instability": rows}
