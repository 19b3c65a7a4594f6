"""``tf-lottery export`` / ``tools/export.py``: export a run's model or a saved model.

Two sources, one of them:

- ``--run_dir=RUN`` (the ``--output_dir`` of ``tf-lottery train``): an IMP run's level
  ``--level=N`` (default: the last finished one) of kind ``--kind=ticket|reinit|random_mask|
  finetune|lr_rewind`` (default: the run's main line), or a sparse-training run's model;
  written to ``RUN/export/level_<N>_<kind>`` (IMP) or ``RUN/export`` unless ``--output_dir``;
- ``--checkpoint=PATH``: a tf_keras model saved with ``model.save`` (SavedModel folder,
  .keras or .h5), or a Keras 3 ``.keras`` file (exported through Keras 3's
  ``model.export`` on the process's ``KERAS_BACKEND``), usually a masked model;
  ``--output_dir`` is required.

The output folder must not exist unless ``--overwrite``. Writes saved_model/,
model_dense.tflite, model_sparse.tflite, sparsity.json and export_report.json (see
tf_lottery.export) and prints the report table.
"""
import os

from absl import app, flags

FLAG_NAMES = ("run_dir", "level", "kind", "checkpoint", "output_dir", "overwrite", "tflite",
              "input_shape", "verify", "latency_runs", "num_threads", "compact", "condense",
              "batch_size", "method", "sparsity", "gin_file")


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines the export flags in ``flag_values`` (a flag already there is kept)."""
    definitions = {
        "run_dir": lambda: flags.DEFINE_string(
            "run_dir", None, "A run folder (the --output_dir of tf-lottery train) to export from.",
            flag_values=flag_values),
        "level": lambda: flags.DEFINE_integer(
            "level", None, "With --run_dir of an IMP run: the level (default: the last "
            "finished one).", flag_values=flag_values),
        "kind": lambda: flags.DEFINE_string(
            "kind", None, "With --run_dir of an IMP run: ticket (or the run's mode: finetune, "
            "lr_rewind), reinit or random_mask (default: the main line).",
            flag_values=flag_values),
        "checkpoint": lambda: flags.DEFINE_string(
            "checkpoint", None, "Saved tf_keras model (SavedModel dir, .keras or .h5).",
            flag_values=flag_values),
        "output_dir": lambda: flags.DEFINE_string(
            "output_dir", None, "Folder to create with the export (default with --run_dir: "
            "RUN/export/level_<N>_<kind>, or RUN/export).", flag_values=flag_values),
        "overwrite": lambda: flags.DEFINE_bool(
            "overwrite", False, "Replace --output_dir if it holds an export.",
            flag_values=flag_values),
        "tflite": lambda: flags.DEFINE_bool(
            "tflite", True, "Also write dense and sparse TFLite models and time them.",
            flag_values=flag_values),
        "input_shape": lambda: flags.DEFINE_list(
            "input_shape", None, "Input shape without batch (e.g. 32,32,3), for models "
            "without Input layers.", flag_values=flag_values),
        "verify": lambda: flags.DEFINE_bool(
            "verify", True, "Check the SavedModel in a fresh process without tf_lottery.",
            flag_values=flag_values),
        "latency_runs": lambda: flags.DEFINE_integer(
            "latency_runs", 50, "TFLite invocations per model for the median latency.",
            flag_values=flag_values),
        "num_threads": lambda: flags.DEFINE_integer(
            "num_threads", 1, "TFLite interpreter threads.", flag_values=flag_values),
        "compact": lambda: flags.DEFINE_bool(
            "compact", False, "Remove the units the masks disconnected (tfl.compact).",
            flag_values=flag_values),
        "condense": lambda: flags.DEFINE_string(
            "condense", None, "Run sparse Dense/1x1 conv layers on condensed or sparse kernels "
            "where faster: 'auto' (timed per layer), or force gather, gather_t, gather_loop or "
            "sparse_matmul.", flag_values=flag_values),
        "batch_size": lambda: flags.DEFINE_integer(
            "batch_size", 1, "Batch size the condensed kernels are timed at.",
            flag_values=flag_values),
        "method": lambda: flags.DEFINE_string(
            "method", None, "With --checkpoint, provenance: how the masks were made "
            "(e.g. rigl, imp).", flag_values=flag_values),
        "sparsity": lambda: flags.DEFINE_float(
            "sparsity", None, "With --checkpoint, provenance: the target sparsity.",
            flag_values=flag_values),
        "gin_file": lambda: flags.DEFINE_multi_string(
            "gin_file", [], "With --checkpoint, provenance: gin config file(s) of the run.",
            flag_values=flag_values),
    }
    for name, define in definitions.items():
        if name not in flag_values:
            define()


def _keras3_file(local: str) -> bool:
    """Whether ``local`` is a ``.keras`` file written by Keras 3 (its metadata.json says)."""
    import json
    import zipfile
    if not zipfile.is_zipfile(local):
        return False
    with zipfile.ZipFile(local) as archive:
        if "metadata.json" not in archive.namelist():
            return False
        version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    return version.startswith("3.")


def load_checkpoint(path: str):
    """The model saved at ``path``, MaskedLayers included: tf_keras, or Keras 3 for a
    ``.keras`` file Keras 3 wrote (loaded on the process's KERAS_BACKEND)."""
    import tf_lottery as tfl
    from tf_lottery import _io
    from tf_lottery._keras import keras
    if not _io.gfile.exists(path):
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    if not _io.gfile.isdir(path) and path.endswith(".keras"):
        with _io.local_copy(path) as local:
            if _keras3_file(local):
                import keras as keras3
                import tf_lottery.keras3  # noqa: F401  (registers MaskedLayer with Keras 3)
                return keras3.saving.load_model(local, compile=False)
    if _io.gfile.isdir(path):  # a SavedModel: TensorFlow reads it from any gfile path
        return keras.models.load_model(path, custom_objects=tfl.custom_objects(), compile=False)
    with _io.local_copy(path) as local:  # h5py reads local files only
        return keras.models.load_model(local, custom_objects=tfl.custom_objects(),
                                       compile=False)


def export_checkpoint(FLAGS=flags.FLAGS):
    """Runs the export the flags describe; returns the report (a dict)."""
    if bool(FLAGS.run_dir) == bool(FLAGS.checkpoint):
        raise app.UsageError("give one of --run_dir (a run folder) or --checkpoint "
                             "(a saved model)")
    options = {"overwrite": FLAGS.overwrite, "tflite": FLAGS.tflite, "verify": FLAGS.verify,
               "latency_runs": FLAGS.latency_runs, "num_threads": FLAGS.num_threads,
               "input_shape": [int(d) for d in FLAGS.input_shape] if FLAGS.input_shape
               else None, "compact": FLAGS.compact, "batch_size": FLAGS.batch_size,
               "condense": True if FLAGS.condense == "auto" else (FLAGS.condense or False)}
    if FLAGS.run_dir:
        from tf_lottery.export.run_folder import export_run
        return export_run(FLAGS.run_dir, FLAGS.output_dir, FLAGS.level, FLAGS.kind, **options)
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required with --checkpoint")
    if FLAGS.level is not None or FLAGS.kind:
        raise app.UsageError("--level and --kind choose a model of --run_dir, not of "
                             "--checkpoint")
    from tf_lottery import _io
    from tf_lottery.export import export
    model = load_checkpoint(FLAGS.checkpoint)
    gin_config = None
    if FLAGS.gin_file:
        gin_config = "\n".join(_io.read_bytes(f).decode("utf-8") for f in FLAGS.gin_file)
    provenance = {"method": FLAGS.method, "level": FLAGS.sparsity, "gin_config": gin_config,
                  "checkpoint": (os.path.abspath(FLAGS.checkpoint)
                                 if _io.is_local(FLAGS.checkpoint) else FLAGS.checkpoint)}
    return export(model, FLAGS.output_dir, provenance=provenance, **options)


def main(argv, FLAGS=flags.FLAGS):
    """absl main of ``tf-lottery export``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    export_checkpoint(FLAGS)
