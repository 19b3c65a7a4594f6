"""The gin entry point that ``tools/train.py`` (``tf-lottery train``) calls.

``train(output_dir)`` builds the strategy, then runs the experiment gin selects:

- ``@imp_experiment``: iterative magnitude pruning with its controls and baselines
  (``IterativeMagnitudePruning.*`` bindings: levels, fraction, rewind_step, mode, ...);
- ``@sparse_training``: one training run of a model that is dense (``sparsity = 0``),
  sparse from scratch (``sparsity``, ``distribution``) with an optional mask updater
  callback (``@RigL``, ``@SET``, ``@SNFS``, ``@StaticSparse``, gradual magnitude pruning).

Each run writes the operative gin config, TensorBoard logs, a final ``metrics.json``
and checkpoints that make it resumable.
"""
import logging
import os
import time
from typing import Callable, NamedTuple, Optional, Sequence

import gin

from tf_lottery._keras import keras, tf
from tf_lottery.lottery import results
from tf_lottery.lottery.imp import IterativeMagnitudePruning
from tf_lottery.training import datasets

log = logging.getLogger("tf_lottery")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name: str = "default", tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy called ``name`` (see ``STRATEGIES``)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}; use one of {STRATEGIES}")


@gin.configurable
def make_optimizer(name: str = "adam", learning_rate=1e-3, momentum: float = 0.0,
                   nesterov: bool = False, weight_decay: Optional[float] = None):
    """A fresh tf_keras optimizer: ``"adam"``, ``"sgd"`` (momentum, nesterov) or ``"adamw"``.

    ``learning_rate`` is a float or a schedule (``@WarmupStepDecay()`` in gin).
    """
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam', 'adamw' or 'sgd'")


class Data(NamedTuple):
    """What ``data()`` returns: train and test data, their ``DatasetInfo``, the batch size."""
    train: object
    test: object
    info: datasets.DatasetInfo
    batch_size: int


@gin.configurable
def data(name: str = gin.REQUIRED, batch_size: int = 60, data_dir: Optional[str] = None,
         eval_batch_size: Optional[int] = None, seed: int = 0) -> Data:
    """Train and test data of dataset ``name``.

    ``digits`` comes as numpy arrays (fast ``fit`` on 1,797 examples); every other
    dataset as batched ``tf.data`` pipelines.
    """
    info = datasets.dataset_info(name)
    if name == "digits":
        x_train, y_train, x_test, y_test = datasets.load_digits_arrays()
        return Data((x_train, y_train), (x_test, y_test), info, batch_size)
    train_ds = datasets.get_dataset(name, "train", batch_size, data_dir=data_dir, seed=seed)
    test_ds = datasets.get_dataset(name, "test", eval_batch_size or batch_size,
                                   data_dir=data_dir, shuffle=False)
    return Data(train_ds, test_ds, info, batch_size)


def _model_fn(model: Callable, info):
    def build():
        return model(input_shape=info.input_shape, num_classes=info.num_classes)
    build.__qualname__ = getattr(model, "__qualname__", "model")
    build.__module__ = getattr(model, "__module__", "")
    return build


@gin.configurable
def imp_experiment(output_dir: str, overwrite: bool = False, model: Callable = gin.REQUIRED,
                   optimizer: Callable = make_optimizer, max_steps: Optional[int] = None):
    """Runs ``IterativeMagnitudePruning`` (its other arguments come from gin).

    ``max_steps`` shortens the run to a smoke test: 2 levels of ``max_steps`` iterations.
    """
    loaded = data()
    kwargs = {"batch_size": loaded.batch_size}
    if max_steps:
        kwargs.update(epochs=1, steps_per_epoch=int(max_steps), levels=2, rewind_step=0)
    runner = IterativeMagnitudePruning(
        model_fn=_model_fn(model, loaded.info), train_data=loaded.train, test_data=loaded.test,
        optimizer_fn=optimizer, output_dir=output_dir, overwrite=overwrite, **kwargs)
    rows = runner.run()
    return {"rows": rows, "timings": runner.timings}


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


@gin.configurable
def sparse_training(output_dir: str, overwrite: bool = False, model: Callable = gin.REQUIRED,
                    optimizer: Callable = make_optimizer, epochs: int = 10,
                    steps_per_epoch: Optional[int] = None, sparsity: float = 0.0,
                    distribution: str = "erk", dense_layers: Sequence[str] = (),
                    updater=None, seed: int = 0, max_steps: Optional[int] = None,
                    verbose: int = 2):
    """Trains one model: dense (``sparsity = 0``, no updater), static sparse, or with a
    mask updater callback (``@RigL()``, ``@SET()``, ``@SNFS()``, gradual magnitude pruning).

    Resumable: ``keras.callbacks.BackupAndRestore`` keeps the state of the epoch in
    progress under ``output_dir/backup``; a finished run (``metrics.json``) is not
    trained again. Writes TensorBoard logs, ``model.h5`` (the masked model;
    ``tfl.custom_object_scope`` loads it), ``metrics.json`` and, for sparse runs,
    ``layer_sparsity.png``.
    """
    from tf_lottery.masking.api import sparsify, sparsity_report

    loaded = data()
    config = {"gin": gin.config_str(), "max_steps": max_steps}
    folder = results.RunDirectory(output_dir, config, overwrite)
    if os.path.exists(folder.file("metrics.json")):
        log.info("%s: this run is finished", output_dir)
        return results.read_json(folder.file("metrics.json"))
    keras.utils.set_random_seed(seed)
    net = model(input_shape=loaded.info.input_shape, num_classes=loaded.info.num_classes)
    if sparsity or updater is not None:
        net = sparsify(net, sparsity, distribution, seed=seed, dense_layers=dense_layers)
    train_ds = _as_dataset(loaded.train, loaded.batch_size, True, seed).repeat()
    test_ds = _as_dataset(loaded.test, loaded.batch_size, False, seed)
    steps = steps_per_epoch or _steps(_as_dataset(loaded.train, loaded.batch_size, False, seed))
    eval_steps = None
    if max_steps:
        epochs, steps, eval_steps = 1, int(max_steps), int(max_steps)
    callbacks = [keras.callbacks.BackupAndRestore(folder.file("backup")),
                 keras.callbacks.TensorBoard(folder.file("tensorboard"))]
    if updater is not None:
        callbacks.append(updater(total_steps=epochs * steps) if isinstance(updater, type)
                         else updater)
    net.compile(optimizer=optimizer(),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    start = time.perf_counter()
    history = net.fit(train_ds, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks,
                      validation_data=test_ds, validation_steps=eval_steps, verbose=verbose)
    fit_seconds = time.perf_counter() - start
    scores = net.evaluate(test_ds, steps=eval_steps, verbose=0, return_dict=True)
    results.save_model(net, folder.file("model.h5"))
    metrics = {"test_accuracy": float(scores["accuracy"]), "test_loss": float(scores["loss"]),
               "epochs": epochs, "steps_per_epoch": steps, "fit_seconds": fit_seconds,
               "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}}
    if sparsity or updater is not None:
        report = sparsity_report(net)
        metrics["sparsity"] = report[-1]["sparsity"]
        metrics["layers"] = list(report)
        log.info("sparsity after training:\n%s", report)
        from tf_lottery.plots import plot_layer_sparsity
        plot_layer_sparsity(report, folder.file("layer_sparsity.png"))
    results.write_json(folder.file("metrics.json"), metrics)
    log.info("test accuracy %.4f after %d steps (%.1f s)", metrics["test_accuracy"],
             epochs * steps, fit_seconds)
    return metrics


@gin.configurable
def train(output_dir: str, experiment: Callable = gin.REQUIRED, strategy: str = "default",
          tpu: Optional[str] = None, overwrite: bool = False):
    """Runs the gin-selected ``experiment`` under ``strategy``; returns its result."""
    with make_strategy(strategy, tpu).scope():
        result = experiment(output_dir=output_dir, overwrite=overwrite)
    results.write_text(os.path.join(output_dir, "operative_config.gin"), gin.operative_config_str())
    return result

