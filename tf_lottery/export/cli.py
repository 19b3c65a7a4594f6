"""``tf-lottery export`` / ``tools/export.py``: export a run's model or a saved model.

Two sources, one of them:

- ``--run_dir=RUN`` (the ``--output_dir`` of ``tf-lottery train``): an IMP run's level
  ``--level=N`` (default: the last finished one) of kind ``--kind=ticket|reinit|random_mask|
  finetune|lr_rewind`` (default: the run's main line), or a sparse-training run's model;
  written to ``RUN/export/level_<N>_<kind>`` (IMP) or ``RUN/export`` unless ``--output_dir``.
  A run trained with Keras 3 (its files say so) is rebuilt with Keras 3 and exported like a
  Keras 3 ``.keras`` file, on the process's ``KERAS_BACKEND`` (``tensorflow`` for LiteRT);
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

# (name, absl DEFINE function, default, help), in the order `--help` lists them
FLAG_TABLE = (
    ("run_dir", flags.DEFINE_string, None,
     "A run folder (the --output_dir of tf-lottery train) to export from."),
    ("level", flags.DEFINE_integer, None,
     "With --run_dir of an IMP run: the level (default: the last finished one)."),
    ("kind", flags.DEFINE_string, None,
     "With --run_dir of an IMP run: ticket (or the run's mode: finetune, lr_rewind), reinit "
     "or random_mask (default: the main line)."),
    ("checkpoint", flags.DEFINE_string, None,
     "Saved tf_keras model (SavedModel dir, .keras or .h5)."),
    ("output_dir", flags.DEFINE_string, None,
     "Folder to create with the export (default with --run_dir: RUN/export/level_<N>_<kind>, "
     "or RUN/export)."),
    ("overwrite", flags.DEFINE_bool, False, "Replace --output_dir if it holds an export."),
    ("tflite", flags.DEFINE_bool, True,
     "Also write dense and sparse TFLite models and time them."),
    ("input_shape", flags.DEFINE_list, None,
     "Input shape without batch (e.g. 32,32,3), for models without Input layers."),
    ("verify", flags.DEFINE_bool, True,
     "Check the SavedModel in a fresh process without tf_lottery."),
    ("latency_runs", flags.DEFINE_integer, 50,
     "TFLite invocations per model for the median latency."),
    ("num_threads", flags.DEFINE_integer, 1, "TFLite interpreter threads."),
    ("compact", flags.DEFINE_bool, False,
     "Remove the units the masks disconnected (tfl.compact)."),
    ("condense", flags.DEFINE_string, None,
     "Run sparse Dense/1x1 conv layers on condensed or sparse kernels where faster: 'auto' "
     "(timed per layer), or force gather, gather_t, gather_loop or sparse_matmul."),
    ("batch_size", flags.DEFINE_integer, 1, "Batch size the condensed kernels are timed at."),
    ("method", flags.DEFINE_string, None,
     "With --checkpoint, provenance: how the masks were made (e.g. rigl, imp)."),
    ("sparsity", flags.DEFINE_float, None,
     "With --checkpoint, provenance: the target sparsity."),
    ("gin_file", flags.DEFINE_multi_string, [],
     "With --checkpoint, provenance: gin config file(s) of the run."),
)
FLAG_NAMES = tuple(row[0] for row in FLAG_TABLE)


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines the export flags in ``flag_values`` (a flag already there is kept)."""
    for name, define, default, help_text in FLAG_TABLE:
        if name not in flag_values:
            define(name, default, help_text, flag_values=flag_values)


def load_checkpoint(path: str):
    """The model saved at ``path``, MaskedLayers included: tf_keras, or Keras 3 for a
    ``.keras`` file Keras 3 wrote (loaded on the process's KERAS_BACKEND)."""
    import tf_lottery as tfl
    from tf_lottery import _io
    from tf_lottery._keras import keras
    if not _io.gfile.exists(path):
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    if not _io.gfile.isdir(path) and path.endswith(".keras"):
        from tf_lottery.keras3.files import is_keras3_archive  # registers MaskedLayer too
        with _io.local_copy(path) as local:
            if is_keras3_archive(local):
                import keras as keras3
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
