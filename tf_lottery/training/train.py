"""The gin entry point that ``tools/train.py`` (``tf-lottery train``) calls.

``train(output_dir)`` builds the strategy, then runs the experiment gin selects:

- ``@imp_experiment``: iterative magnitude pruning with its controls and baselines
  (``IterativeMagnitudePruning.*`` bindings: levels, fraction, rewind_step, mode, ...);
- ``@instability_experiment`` (``tf_lottery.training.instability_experiment``): error
  barrier against rewind point (Frankle et al. 2020);
- ``@imp_baselines`` (``tf_lottery.training.baselines_experiment``): IMP under several
  modes (ticket, finetune, lr_rewind), each with its trials, in one table and figure;
- ``@sparse_training`` (``tf_lottery.training.sparse_experiment``): one training run of
  a model that is dense (``sparsity = 0``), sparse from scratch (``sparsity``,
  ``distribution``) with an optional mask updater callback (``@RigL``, ``@SET``,
  ``@SNFS``, ``@StaticSparse``, ``@GradualMagnitudePruning`` with
  ``GradualMagnitudePruning.schedule = @PolynomialDecay()``).

Each run writes the operative gin config (once, when it first finishes), TensorBoard
logs, checkpoints that make it resumable and its final metrics as JSON (``metrics.json``
for ``sparse_training``, ``summary.json`` / ``summary.csv`` for IMP); ``train.export =
True`` also exports the final model with ``tf_lottery.export.export`` into
``output_dir/export`` (IMP: ``output_dir/export/level_<i>_<kind>``). Everything that can
be misconfigured (gin values, the optimizer, the model, the data) is built before the
run folder is created or changed.

The smoke override ``train.max_steps = N`` shortens every experiment: IMP runs 2
levels of N iterations (late rewinding rewinds to iteration 1; tf.data test and
validation sets are cut to N batches); ``sparse_training`` trains N steps, skips the
per-epoch validation and evaluates N test batches (RigL-style updaters end their updates
at 75% of the N steps, gradual pruning reaches its final sparsity at step N).

Under ``MultiWorkerMirroredStrategy`` only the chief writes into ``output_dir``; every
other worker works in a private temporary copy of it that is deleted at the end (as
TensorFlow's multi-worker guide recommends). Resuming a multi-worker run needs
``output_dir`` on a filesystem all workers see.
"""
import inspect
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import gin

from tf_lottery import _io
from tf_lottery._keras import tf
from tf_lottery.lottery import results
from tf_lottery.lottery.imp import IterativeMagnitudePruning
from tf_lottery.training import datasets, flavour

log = logging.getLogger("tf_lottery")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def parse_gin(files: Sequence[str] = (), bindings: Sequence[str] = ()) -> None:
    """Parses gin config ``files`` then ``bindings`` (``gin.parse_config_files_and_bindings``).

    The folder of every file joins gin's search path, so ``include 'base/x.gin'`` in a
    config resolves next to it whatever the working directory. Unknown configurables or
    parameters raise gin's error naming the file and line, before anything runs.
    """
    prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
    for path in reversed(list(files)):
        folder = os.path.dirname(os.path.abspath(path))
        if folder in prefixes:
            prefixes.remove(folder)
        prefixes.insert(0, folder)  # before '' (the working directory): no lookup noise
    gin.parse_config_files_and_bindings([os.path.abspath(f) for f in files], list(bindings))


# --------------------------------------------------------------------------- strategy

def make_strategy(name: str = "default", tpu: Optional[str] = None) -> tf.distribute.Strategy:
    """The tf.distribute strategy called ``name`` (see ``STRATEGIES``).

    ``multi_worker`` reads the cluster from the ``TF_CONFIG`` environment variable.
    """
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


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the results (TF's multi-worker convention: the
    ``chief`` task, or worker 0 when the cluster has no chief; always True without a
    cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if resolver is None or task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or int(resolver.task_id or 0) != 0:
        return False
    return "chief" not in resolver.cluster_spec().as_dict()


def _worker_dir(output_dir: str, strategy) -> Optional[str]:
    """For a non-chief worker: a private temporary copy of ``output_dir`` (None for the
    chief). The copy lets every worker see the same finished levels when resuming."""
    if is_chief(strategy):
        return None
    resolver = strategy.cluster_resolver
    tmp = tempfile.mkdtemp(prefix=f"tf_lottery_{resolver.task_type}{resolver.task_id}_")
    if not _io.is_local(output_dir):
        _io.download_tree(output_dir, tmp, skip=("tensorboard", "backup", "export", ".tmp-*"))
    elif os.path.isdir(output_dir):
        try:
            shutil.copytree(output_dir, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
                "tensorboard", "backup", "export", ".tmp-*"))
        except shutil.Error as error:  # a file the chief replaced while we copied
            log.warning("copying %s for worker %s: %s", output_dir, resolver.task_id, error)
    return tmp


# --------------------------------------------------------------------------- building blocks

@gin.configurable
def make_optimizer(name: str = "adam", learning_rate=1e-3, momentum: float = 0.0,
                   nesterov: bool = False, weight_decay: Optional[float] = None):
    """A fresh optimizer: ``"adam"``, ``"sgd"`` (momentum, nesterov) or ``"adamw"``, of
    the Keras ``train.keras`` selects (``tf_lottery.training.flavour``).

    ``learning_rate`` is a float or a schedule (``@WarmupStepDecay()`` in gin).
    """
    keras = flavour.keras_module()
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 0.004)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; use 'adam', 'adamw' or 'sgd'")


class Data(NamedTuple):
    """What ``data()`` returns: train and test data, their ``DatasetInfo``, the batch size,
    and validation data (None: validate on the test data)."""
    train: object
    test: object
    info: datasets.DatasetInfo
    batch_size: int
    validation: object = None


@gin.configurable
def data(name: str = gin.REQUIRED, batch_size: int = 60, data_dir: Optional[str] = None,
         eval_batch_size: Optional[int] = None, seed: int = 0, train_split: str = "train",
         test_split: str = "test", validation_split: Optional[str] = None,
         synthetic: Optional[Mapping] = None) -> Data:
    """Train, test (and validation) data of dataset ``name``.

    ``digits`` comes as numpy arrays (fast ``fit`` on 1,797 examples); every other
    dataset as batched ``tf.data`` pipelines (``get_dataset.*`` bindings apply, e.g.
    ``get_dataset.augment = False``). Splits take slices: Frankle & Carbin hold out
    5,000 training images for validation (``train_split = 'train[:90%]'``,
    ``validation_split = 'train[90%:]'`` on CIFAR-10; digits takes the same slices);
    the validation split is never augmented. Validation data never comes from the
    test split. ``synthetic`` holds the options of the ``synthetic`` dataset
    (``{'input_shape': (32, 32, 3), 'num_classes': 10, 'num_examples': 1024}``).
    """
    synthetic = dict(synthetic or {})
    info = datasets.dataset_info(name, **(synthetic if name == "synthetic" else {}))
    test_names = {test_split.split("[")[0].strip()} | (
        {"validation"} if name == "imagenet2012" else set())
    if validation_split and validation_split.split("[")[0].strip() in test_names:
        raise ValueError(f"validation_split {validation_split!r} comes from the test split: "
                         "hold the validation data out of the training split, e.g. "
                         "train_split='train[:90%]', validation_split='train[90%:]'")
    if name == "digits":
        train = datasets.digits_split(train_split)
        validation = datasets.digits_split(validation_split) if validation_split else None
        return Data(train, datasets.digits_split(test_split), info, batch_size, validation)
    options = synthetic if name == "synthetic" else {}
    eval_batch = eval_batch_size or batch_size
    train_ds = datasets.get_dataset(name, train_split, batch_size, data_dir=data_dir, seed=seed,
                                    **options)
    test_ds = datasets.get_dataset(name, test_split, eval_batch, data_dir=data_dir,
                                   shuffle=False, augment=False, **options)
    validation = None
    if validation_split:
        validation = datasets.get_dataset(name, validation_split, eval_batch,
                                          data_dir=data_dir, shuffle=False, augment=False,
                                          **options)
    return Data(train_ds, test_ds, info, batch_size, validation)


def _model_fn(model: Callable, info):
    def build():
        return model(input_shape=info.input_shape, num_classes=info.num_classes)
    build.__qualname__ = getattr(model, "__qualname__", "model")
    build.__module__ = getattr(model, "__module__", "")
    return build


def _bound(name: str, default=None):
    """The value gin binds to ``name`` (``"Configurable.param"``), else ``default``."""
    try:
        return gin.query_parameter(name)
    except ValueError:
        return default


def _take(dataset, steps: int):
    return dataset.take(steps) if isinstance(dataset, tf.data.Dataset) else dataset


def checksums(model) -> dict:
    """Short sha256 digests of a model's masks (if any) and of all its weights: equal
    digests on every worker show that replicas hold the same model."""
    from tf_lottery.dispatch import get_masks, masked_layers

    out = {"weights": results.digest(model.get_weights())}
    if masked_layers(model):
        out["masks"] = results.digest(get_masks(model).values())
    return out


def _export(model, path: str, provenance: dict) -> Optional[str]:
    """``tf_lottery.export.export(model, path)``; skips an existing export."""
    from tf_lottery.export import export as export_model

    if _io.gfile.exists(path):
        log.info("%s exists: not exporting again", path)
        return path
    export_model(model, path, provenance=provenance, verbose=False)
    log.info("exported the final model to %s", path)
    return path


# --------------------------------------------------------------------------- experiments

@gin.configurable
def imp_experiment(output_dir: str, overwrite: bool = False, model: Callable = gin.REQUIRED,
                   optimizer: Callable = make_optimizer, max_steps: Optional[int] = None,
                   data_dir: Optional[str] = None, export: bool = False,
                   verbose: Optional[int] = None, trials: Optional[int] = None,
                   overrides: Optional[Mapping] = None):
    """Runs ``IterativeMagnitudePruning`` (its other arguments come from gin;
    ``overrides``, e.g. ``{"mode": "finetune"}``, replace some of them).

    ``max_steps`` shortens the run to a smoke test: 2 levels of ``max_steps`` iterations,
    a nonzero ``rewind_step`` becomes iteration 1, and tf.data test and validation sets
    are cut to ``max_steps`` batches. ``export`` exports the last level's main line into
    ``output_dir/export/level_<i>_<kind>`` (``tf-lottery export`` exports any other).
    ``verbose`` (if not None) replaces ``IterativeMagnitudePruning.verbose``, ``trials``
    (if not None) ``IterativeMagnitudePruning.trials``: N seeds in ``output_dir/trial_<i>``
    with a summary over them; checksums and ``export`` then use trial 0.
    """
    loaded = data(**({"data_dir": data_dir} if data_dir else {}))
    test, validation = loaded.test, loaded.validation
    kwargs = {"batch_size": loaded.batch_size}
    if max_steps:
        max_steps = int(max_steps)
        rewind_to = 0 if str(_bound("IterativeMagnitudePruning.rewind_step", 0)) in (
            "0", "0it", "0ep") or max_steps < 2 else 1
        kwargs.update(epochs=1, steps_per_epoch=max_steps, levels=2, rewind_step=rewind_to)
        test, validation = _take(test, max_steps), _take(validation, max_steps)
    if validation is not None:
        kwargs["validation_data"] = validation
        kwargs["validation_note"] = (
            f"{_bound('data.name')} {_bound('data.validation_split')!r}, held out of the "
            f"training data (training on {_bound('data.train_split', 'train')!r}; tested on "
            f"{_bound('data.test_split', 'test')!r})")
    if verbose is not None:
        kwargs["verbose"] = int(verbose)
    if trials is not None:
        kwargs["trials"] = int(trials)
    kwargs.update(overrides or {})
    build = _model_fn(model, loaded.info)
    runner = IterativeMagnitudePruning(
        model_fn=build, train_data=loaded.train, test_data=test, optimizer_fn=optimizer,
        output_dir=output_dir, overwrite=overwrite, **kwargs)
    rows = runner.run()
    result = {"rows": rows, "timings": runner.timings}
    last = runner.levels - 1
    if runner.trials > 1 and output_dir:
        output_dir = os.path.join(output_dir, "trial_0")
    masks_file = os.path.join(output_dir, f"level_{last}", "masks.npz")
    if _io.gfile.exists(masks_file):
        result["checksums"] = {"masks": results.digest(results.read_arrays(masks_file).values())}
    if export:
        from tf_lottery.export.run_folder import default_output, load_run_model
        ticket, provenance = load_run_model(output_dir, last, runner.mode)
        _export(ticket, default_output(output_dir, provenance), provenance)
    return result


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


MAX_STEPS_ENV = "TF_LOTTERY_MAX_STEPS"


@gin.configurable
def train(output_dir: str, experiment: Callable = gin.REQUIRED, strategy: str = "default",
          tpu: Optional[str] = None, overwrite: bool = False, max_steps: Optional[int] = None,
          export: bool = False, data_dir: Optional[str] = None, mock_data: int = 0,
          verbose: Optional[int] = None, trials: Optional[int] = None, keras: int = 2,
          backend: Optional[str] = None):
    """Runs the gin-selected ``experiment`` under ``strategy``; returns its result.

    Args:
      output_dir: where the run writes its results (only the chief writes here).
      experiment: ``@imp_experiment``, ``@sparse_training`` or any callable taking
        ``output_dir`` and ``overwrite`` (and, if it accepts them, ``max_steps``,
        ``data_dir``, ``export``, ``backup_dir``, ``verbose``).
      strategy, tpu: see ``make_strategy``.
      overwrite: move a different run found in ``output_dir`` aside and start again.
      max_steps: smoke override; every experiment honours it (see the module doc). The
        environment variable ``TF_LOTTERY_MAX_STEPS=N`` sets it when it is not bound.
      export: export the final model into ``output_dir/export`` (chief only).
      data_dir: tensorflow-datasets data directory (overrides ``data.data_dir``).
      mock_data: if > 0, TFDS datasets are replaced by this many random examples per
        split (``tfds.testing.mock_data``): for smoke tests without the data.
      verbose: if not None, the experiment's verbosity (``IterativeMagnitudePruning.verbose``,
        ``sparse_training.verbose``), which is not part of the run's identity.
      trials: if not None, run this many seeds (experiments that accept ``trials``:
        ``imp_experiment``), each in ``output_dir/trial_<i>``, with a summary over them.
      keras: 2 builds the model and optimizer with tf_keras, 3 with Keras 3
        (``tf_lottery.training.flavour``).
      backend: Keras 3's backend (``"tensorflow"``, ``"jax"``, ``"torch"``; implies
        ``keras = 3``); it must be the one Keras 3 loads with in this process
        (``KERAS_BACKEND``; ``tf-lottery train --backend`` takes care of that).
    """
    keras = flavour.check_keras(keras)
    if backend is not None:
        flavour.select_backend(backend)
        keras = 3
    if keras == 3 and strategy != "default" and (
            strategy == "tpu" or flavour.loaded_backend() != "tensorflow"):
        raise ValueError(f"strategy {strategy!r} is not available for Keras 3 on the "
                         f"{backend or flavour.loaded_backend()} backend: use "
                         "--strategy=default, or the tensorflow backend")
    if keras == 3 and strategy == "multi_worker":
        raise ValueError("strategy 'multi_worker' is not available for Keras 3: Keras 3's fit "
                         "fails under MultiWorkerMirroredStrategy (Keras 3.15, "
                         "keras-team/keras#20585); use --strategy=mirrored on one machine, or "
                         "tf_keras (train.keras = 2) on several")
    if not max_steps and os.environ.get(MAX_STEPS_ENV):
        max_steps = int(os.environ[MAX_STEPS_ENV])
    dist = make_strategy(strategy, tpu)
    private = _worker_dir(output_dir, dist)
    write_dir = private or output_dir
    kwargs = {"output_dir": write_dir, "overwrite": overwrite}
    optional = {"max_steps": int(max_steps) if max_steps else None, "data_dir": data_dir,
                "export": bool(export) and private is None,
                "backup_dir": os.path.join(output_dir, "backup"), "verbose": verbose,
                "trials": trials}
    for name, value in optional.items():
        if value is not None and value is not False and _accepts(experiment, name):
            kwargs[name] = value
    if trials is not None and "trials" not in kwargs:
        raise ValueError(f"train.trials = {trials}: this experiment runs one seed; trials "
                         "work with train.experiment = @imp_experiment")
    try:
        with dist.scope(), flavour.use(keras):
            if mock_data:
                import tensorflow_datasets as tfds
                with tfds.testing.mock_data(num_examples=int(mock_data)):
                    result = experiment(**kwargs)
            else:
                result = experiment(**kwargs)
        operative = os.path.join(write_dir, "operative_config.gin")
        if not _io.gfile.exists(operative):  # written once: a repeat calls fewer configurables
            results.write_text(operative, gin.operative_config_str())
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
    return result


def summary(result) -> dict:
    """The JSON-able essentials of ``train``'s result (printed by the binary)."""
    if isinstance(result, Mapping) and "instability" in result:
        keys = ("rewind_step", "rewind_iteration", "barrier", "end_errors")
        return {"instability": [{k: r[k] for k in keys} for r in result["instability"]]}
    if isinstance(result, Mapping) and "rows" in result:
        keys = ("level", "kind", "remaining", "test_accuracy", "early_stop_iteration",
                "early_stop_test_accuracy")
        return {"rows": [{k: r.get(k) for k in keys} for r in result["rows"]],
                "checksums": result.get("checksums")}
    if isinstance(result, Mapping):
        keys = ("method", "test_accuracy", "test_loss", "sparsity", "checksums")
        return {k: result[k] for k in keys if k in result}
    return {"result": json.loads(json.dumps(result, default=str))}
