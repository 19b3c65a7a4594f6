"""The models a run folder holds: any level and kind of an IMP run, or a training run's model.

``load_run_model(run_dir, level, kind)`` rebuilds one of them from what the run wrote:

- IMP runs (``run.json`` with ``levels``): the architecture from ``model.json``
  (``model.to_json()`` of the masked model), the weights and masks from
  ``level_<i>/weights.h5`` (the main line: ``ticket``, ``finetune`` or ``lr_rewind``) or
  ``level_<i>/weights_<control>.h5`` (``reinit``, ``random_mask``; levels >= 1);
- sparse-training runs: ``model.h5`` (the whole masked model), also each cell
  ``cells/<method>_<sparsity>/trial_<k>`` of a sparsity sweep.

Runs of ``tf-lottery train --keras=3`` write the same files with Keras 3, and the files say
which Keras wrote them (never the environment): tf_keras's ``model.json`` names its
``keras_version`` (2.x), Keras 3's is a ``serialize_keras_object`` dict (``module``,
``class_name``, no version); tf_keras's ``model.h5`` is HDF5, Keras 3's the ``.keras`` zip
with a Keras 3 ``metadata.json``. A Keras 3 run is rebuilt with Keras 3 on this process's
backend (``KERAS_BACKEND``; saved weights do not depend on the backend that trained them,
so a JAX or PyTorch run loads on TensorFlow) and exported by ``tf_lottery.export.keras3``
(Keras 3's ``model.export``: TensorFlow or JAX backend; LiteRT files on TensorFlow only).

``export_run`` exports it with ``tf_lottery.export.export`` (provenance: the run's
``config.gin``, level, kind and weights remaining).
"""
import json
import os
from typing import Optional, Tuple

from tf_lottery import _io
from tf_lottery.lottery import results


class RunExportError(ValueError):
    """The run folder does not hold the model asked for (the message says what it holds)."""


def architecture_keras(text: str) -> int:
    """2 (tf_keras) or 3 (Keras 3): the Keras whose ``model.to_json()`` wrote ``text``.
    tf_keras always writes ``keras_version``; Keras 3 writes ``module`` and no version."""
    spec = json.loads(text)
    version = str(spec.get("keras_version", ""))
    return 3 if version.startswith("3.") or (not version and "module" in spec) else 2


def _keras3():
    import keras
    import tf_lottery.keras3  # noqa: F401  (registers MaskedLayer with Keras 3)
    return keras


def _load_trained(path: str):
    """The whole masked model a sparse-training run saved as ``model.h5``: tf_keras HDF5,
    or Keras 3's ``.keras`` zip under that name."""
    import tf_lottery as tfl
    from tf_lottery._keras import keras
    from tf_lottery.keras3.files import is_keras3_archive, load_model

    with _io.local_copy(path) as local:  # h5py and zipfile read local files only
        if is_keras3_archive(local):
            return load_model(local)
        return keras.models.load_model(local, custom_objects=tfl.custom_objects(),
                                       compile=False)


def _imp_choice(run_dir: str, config: dict, level: Optional[int], kind: Optional[str]):
    levels, mode = int(config["levels"]), config["mode"]
    kinds = [mode, *config.get("controls", [])]
    finished = [i for i in range(levels)
                if results.level_finished(run_dir, i)]
    if not finished:
        raise RunExportError(f"{run_dir} has no finished level yet; export after level 0 ends")
    level = finished[-1] if level is None else int(level)
    kind = mode if kind is None else kind
    if kind not in kinds:
        raise RunExportError(f"this run trained the kinds {kinds}, not {kind!r}; "
                             f"use --kind={' or --kind='.join(kinds)}")
    if level not in finished:
        raise RunExportError(f"level {level} is not finished in {run_dir} (finished levels: "
                             f"{finished[0]}..{finished[-1]}); choose one of them")
    if kind != mode and level == 0:
        raise RunExportError(f"the {kind} control starts at level 1 (level 0 is the dense "
                             "network); use --level=1 or higher")
    return level, kind, mode


def load_run_model(run_dir: str, level: Optional[int] = None,
                   kind: Optional[str] = None) -> Tuple[object, dict]:
    """The masked model (tf_keras or Keras 3, as the run was trained) a run folder holds,
    and its provenance (a dict).

    ``level`` (default: the last finished level) and ``kind`` (default: the run's main
    line) choose an IMP model; a sparse-training run holds one model and takes neither.
    """
    import tf_lottery as tfl
    from tf_lottery._keras import keras

    run_file = os.path.join(run_dir, "run.json")
    if not _io.gfile.exists(run_file):
        raise RunExportError(f"{run_dir} is not a tf-lottery run folder (no run.json); give "
                             "--run_dir the --output_dir of a run, or --checkpoint a saved model")
    config = results.read_json(run_file)
    if config.get("experiment") == "sparse_sweep":
        raise RunExportError(f"{run_dir} is a sparsity sweep; export one of its cells, e.g. "
                             f"--run_dir={os.path.join(run_dir, 'cells', 'RigL_90', 'trial_0')}")
    gin_file = os.path.join(run_dir, "config.gin")
    provenance = {"run_dir": os.path.abspath(run_dir) if _io.is_local(run_dir) else run_dir,
                  "gin_config": (_io.read_bytes(gin_file).decode("utf-8")
                                 if _io.gfile.exists(gin_file) else None)}
    if "modes" in config:  # @imp_baselines: one IMP run folder per mode
        raise RunExportError(f"{run_dir} compares the IMP modes {config['modes']}, one run "
                             "folder each: give --run_dir="
                             f"{os.path.join(run_dir, 'mode_' + config['modes'][0])} (add "
                             "/trial_<i> when it ran trials)")
    if "levels" not in config:  # a sparse-training run
        if level is not None or kind is not None:
            raise RunExportError(f"{run_dir} is a training run with one model: drop --level "
                                 "and --kind")
        metrics_file = os.path.join(run_dir, "metrics.json")
        if not _io.gfile.exists(metrics_file):
            raise RunExportError(f"{run_dir} is not finished (no metrics.json); run the same "
                                 "train command again to finish it, then export")
        metrics = results.read_json(metrics_file)
        model = _load_trained(os.path.join(run_dir, "model.h5"))
        provenance.update(method=metrics.get("method"), level=metrics.get("sparsity", 0.0))
        return model, provenance
    if int(config.get("trials", 1)) > 1:
        raise RunExportError(f"{run_dir} holds {config['trials']} trials, one run folder each: "
                             f"give --run_dir={os.path.join(run_dir, 'trial_0')} (or another "
                             "trial_<i>)")
    level, kind, mode = _imp_choice(run_dir, config, level, kind)
    architecture = os.path.join(run_dir, "model.json")
    if not _io.gfile.exists(architecture):
        raise RunExportError(f"{run_dir} has no model.json (the model could not be saved as "
                             "JSON); rebuild the model in Python and load "
                             f"level_{level}/weights.h5 into tfl.sparsify(model, 0.0) with "
                             "tf_lottery.lottery.results.load_weights")
    weights = os.path.join(run_dir, f"level_{level}",
                           "weights.h5" if kind == mode else f"weights_{kind}.h5")
    if not _io.gfile.exists(weights):
        raise RunExportError(f"{weights} is missing (runs made by an older tf-lottery "
                             "kept only the main line's weights); train the run again")
    text = _io.read_bytes(architecture).decode("utf-8")
    if architecture_keras(text) == 3:
        model = _keras3().models.model_from_json(text)
    else:
        model = keras.models.model_from_json(text, custom_objects=tfl.custom_objects())
    results.load_weights(model, weights)  # either Keras's weight file format
    metrics = results.read_json(os.path.join(run_dir, f"level_{level}", "metrics.json"))
    row = next((r for r in metrics["kinds"] if r["kind"] == kind), {})
    provenance.update(method=f"imp_{kind}", level=level, kind=kind,
                      remaining=row.get("remaining"), test_accuracy=row.get("test_accuracy"),
                      rewind_step=config.get("rewind_step"), scope=config.get("scope"))
    return model, provenance


def default_output(run_dir: str, provenance: dict) -> str:
    """``RUN/export`` for a training run, ``RUN/export/level_<i>_<kind>`` for IMP."""
    if provenance.get("kind") is None:
        return os.path.join(run_dir, "export")
    return os.path.join(run_dir, "export", f"level_{provenance['level']}_{provenance['kind']}")


def export_run(run_dir: str, output_dir: Optional[str] = None, level: Optional[int] = None,
               kind: Optional[str] = None, **export_kwargs):
    """Exports one model of a run folder (see ``load_run_model``); returns the report."""
    from tf_lottery.dispatch import is_keras3
    from tf_lottery.export import export
    from tf_lottery.export.keras3 import SAVED_MODEL_BACKENDS

    model, provenance = load_run_model(run_dir, level, kind)
    backend = _keras3().config.backend() if is_keras3(model) else None
    if backend is not None and backend not in SAVED_MODEL_BACKENDS:
        raise RunExportError(
            f"{run_dir} is a Keras 3 run and Keras {_keras3().__version__} cannot write a "
            f"SavedModel on the {backend} backend this process runs: export it with "
            f"KERAS_BACKEND=tensorflow tf-lottery export --run_dir={run_dir} (the run loads "
            "on any backend; jax works too, without LiteRT files)")
    path = output_dir or default_output(run_dir, provenance)
    return export(model, path, provenance=provenance, **export_kwargs)
