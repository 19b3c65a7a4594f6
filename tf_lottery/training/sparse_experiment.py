"""``@sparse_training``: one training run of a model that is dense (``sparsity = 0``),
sparse from scratch (``sparsity``, ``distribution``, ``mask_init``) or trained with a mask
updater callback (``@RigL``, ``@SET``, ``@SNFS``, ``@StaticSparse``,
``@GradualMagnitudePruning``), on tf_keras or Keras 3 (``train.keras``). ``train``
(``tf_lottery.training.train``) runs it; ``tf_lottery.training.sweep`` runs one per cell.
"""
import os
import time
from typing import Callable, Optional, Sequence

import gin

from tf_lottery import _io
from tf_lottery._keras import tf, tfmot
from tf_lottery.lottery import results
from tf_lottery.training import train as training


def _as_dataset(data, batch_size: int, shuffle: bool, seed: int) -> tf.data.Dataset:
    if isinstance(data, tf.data.Dataset):
        return data
    ds = tf.data.Dataset.from_tensor_slices(data)
    if shuffle:
        ds = ds.shuffle(len(data[0]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size)


def _steps(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality().numpy())
    if n < 1:
        raise ValueError("the training data has unknown length: bind "
                         "sparse_training.steps_per_epoch")
    return n


def _make_updater(updater, total_steps: int, max_steps: Optional[int], log_dir: str):
    """An updater instance: classes get ``total_steps`` and ``log_dir`` (and, in a smoke
    run, a schedule that updates within ``max_steps``)."""
    if updater is None or not isinstance(updater, type):
        return updater
    from tf_lottery import dst

    kwargs = {"total_steps": total_steps, "log_dir": log_dir}
    if max_steps and issubclass(updater, (dst.RigL, dst.SET, dst.SNFS, dst.StaticSparse)):
        kwargs["end_step"] = None  # 75% of the smoke run (a configured end_step is beyond it)
    elif max_steps and issubclass(updater, dst.GradualMagnitudePruning):
        kwargs["schedule"] = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=float(training._bound("PolynomialDecay.initial_sparsity", 0.0)),
            final_sparsity=float(training._bound("PolynomialDecay.final_sparsity", 0.5)),
            begin_step=0, end_step=int(max_steps), frequency=1)
    return updater(**kwargs)


def _method(updater, sparsity: float) -> str:
    if updater is None:
        return "static" if sparsity else "dense"
    cls = updater if isinstance(updater, type) else type(updater)
    for base in cls.__mro__:
        if base.__module__.startswith("tf_lottery"):
            return base.__name__
    return cls.__name__


@gin.configurable
def sparse_training(output_dir: str, overwrite: bool = False, model: Callable = gin.REQUIRED,
                    optimizer: Callable = training.make_optimizer, epochs: int = 10,
                    steps_per_epoch: Optional[int] = None, sparsity: float = 0.0,
                    distribution: str = "erk", dense_layers: Sequence[str] = (),
                    mask_init: str = "random",
                    updater=None, seed: int = 0, label_smoothing: float = 0.0,
                    max_steps: Optional[int] = None, verbose: int = 2,
                    data_dir: Optional[str] = None, backup_dir: Optional[str] = None,
                    export: bool = False):
    """Trains one model: dense (``sparsity = 0``, no updater), static sparse, or with a
    mask updater callback (``@RigL``, ``@SET``, ``@SNFS``, ``@StaticSparse``,
    ``@GradualMagnitudePruning``; a class gets ``total_steps`` and ``log_dir`` here).

    ``dense_layers`` (layer names or classes, e.g. ``('DepthwiseConv2D',)``) stay dense.
    ``mask_init`` draws the initial masks as ``sparsify`` does: ``"snip"`` and ``"grasp"``
    score on the first training batch, ``"synflow"`` needs no data (pruning at
    initialisation; with ``distribution = 'global'`` as in their papers).
    ``label_smoothing`` > 0 trains with one-hot labels smoothed by that amount (RigL's
    ImageNet recipe uses 0.1).

    Resumable: ``keras.callbacks.BackupAndRestore`` keeps the state of the epoch in
    progress under ``backup_dir`` (default ``output_dir/backup``); a finished run
    (``metrics.json``) is not trained again. Writes TensorBoard logs, ``model.h5`` (the
    masked model: HDF5 that ``tfl.custom_object_scope`` loads, under ``train.keras = 3``
    Keras 3's ``.keras`` format; ``tf-lottery export --run_dir`` reads either),
    ``metrics.json`` and, for sparse runs, ``layer_sparsity.png``.
    """
    from tf_lottery.dispatch import keras_of, set_random_seed, sparsify, sparsity_report

    loaded = training.data(**({"data_dir": data_dir} if data_dir else {}))
    method = _method(updater, sparsity)
    config = {"gin": gin.config_str(), "max_steps": max_steps}
    # Everything that can be misconfigured is built before the folder is touched.
    set_random_seed(seed)
    net = model(input_shape=loaded.info.input_shape, num_classes=loaded.info.num_classes)
    keras = keras_of(net)  # tf_keras, or Keras 3 under train.keras = 3
    train_ds = _as_dataset(loaded.train, loaded.batch_size, True, seed).repeat()
    if sparsity or updater is not None:
        scored = mask_init in ("snip", "grasp")
        batch = {"data": next(iter(train_ds))} if scored else {}
        net = sparsify(net, sparsity, distribution, mask_init=mask_init, seed=seed,
                       dense_layers=dense_layers, **batch)
    fresh_optimizer = optimizer()
    test_ds = _as_dataset(loaded.test, loaded.batch_size, False, seed)
    val_ds = (test_ds if loaded.validation is None
              else _as_dataset(loaded.validation, loaded.batch_size, False, seed))
    steps = steps_per_epoch or _steps(_as_dataset(loaded.train, loaded.batch_size, False, seed))
    eval_steps = None
    if max_steps:
        epochs, steps, eval_steps = 1, int(max_steps), int(max_steps)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if label_smoothing:
        classes = loaded.info.num_classes

        def one_hot(x, y):
            return x, tf.one_hot(tf.cast(y, tf.int32), classes)

        train_ds, test_ds, val_ds = (d.map(one_hot) for d in (train_ds, test_ds, val_ds))
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=float(label_smoothing))
    callback = _make_updater(updater, epochs * steps, max_steps,
                             os.path.join(output_dir, "tensorboard"))
    folder = results.RunDirectory(output_dir, config, overwrite)
    if _io.gfile.exists(folder.file("metrics.json")):
        training.log.info("%s: this run is finished", output_dir)
        metrics = results.read_json(folder.file("metrics.json"))
        if export:
            from tf_lottery.export.run_folder import load_run_model
            trained, _ = load_run_model(output_dir)  # tf_keras or Keras 3, as saved
            training._export(trained, os.path.join(output_dir, "export"),
                    {"method": method, "level": sparsity})
        return metrics
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir or folder.file("backup")),
                 keras.callbacks.TensorBoard(folder.file("tensorboard"))]
    if callback is not None:
        callbacks.append(callback)
    net.compile(optimizer=fresh_optimizer, loss=loss, metrics=["accuracy"])
    start = time.perf_counter()
    history = net.fit(train_ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                      validation_data=None if max_steps else val_ds, verbose=verbose)
    fit_seconds = time.perf_counter() - start
    scores = net.evaluate(test_ds, steps=eval_steps, verbose=0, return_dict=True)
    results.save_model(net, folder.file("model.h5"))
    metrics = {"method": method, "mask_init": mask_init,
               "test_accuracy": float(scores["accuracy"]),
               "test_loss": float(scores["loss"]), "epochs": epochs,
               "steps_per_epoch": steps, "fit_seconds": fit_seconds,
               "checksums": training.checksums(net),
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    if sparsity or updater is not None:
        report = sparsity_report(net)
        metrics["sparsity"] = report[-1]["sparsity"]
        metrics["layers"] = list(report)
        training.log.info("sparsity after training:\n%s", report)
        drawn = folder.file(os.path.join("tensorboard", "layer_sparsity.png"))
        if _io.gfile.exists(drawn):  # the updater callback drew the final masks already
            _io.atomic_write(folder.file("layer_sparsity.png"),
                             lambda tmp: _io.gfile.copy(drawn, tmp, overwrite=True))
        else:
            from tf_lottery.plots import plot_layer_sparsity
            plot_layer_sparsity(report, folder.file("layer_sparsity.png"))
    results.write_json(folder.file("metrics.json"), metrics)
    training.log.info("test accuracy %.4f after %d steps (%.1f s)", metrics["test_accuracy"],
             epochs * steps, fit_seconds)
    if export:
        training._export(net, os.path.join(output_dir, "export"),
                {"method": method, "level": metrics.get("sparsity", 0.0)})
    return metrics


# --------------------------------------------------------------------------- entry point
