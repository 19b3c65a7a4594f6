"""``tf-lottery export`` / ``tools/export.py``: export a saved sparse tf_keras model.

``--checkpoint`` is a tf_keras model saved with ``model.save`` (SavedModel folder, .keras
or .h5), usually a masked model from tfl.sparsify / training; ``--output_dir`` must not
exist unless ``--overwrite``. Writes saved_model/, model_dense.tflite,
model_sparse.tflite, sparsity.json and export_report.json (see tf_lottery.export) and
prints the report table.
"""
import os

from absl import app, flags


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines the export flags in ``flag_values``."""
    flags.DEFINE_string("checkpoint", None, "Saved tf_keras model (SavedModel dir, .keras or .h5).",
                        flag_values=flag_values)
    flags.DEFINE_string("output_dir", None, "Folder to create with the export.", flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace --output_dir if it exists.", flag_values=flag_values)
    flags.DEFINE_bool("tflite", True, "Also write dense and sparse TFLite models and time them.",
                      flag_values=flag_values)
    flags.DEFINE_list("input_shape", None,
                      "Input shape without batch (e.g. 32,32,3), for models without Input layers.",
                      flag_values=flag_values)
    flags.DEFINE_bool("verify", True, "Check the SavedModel in a fresh process without tf_lottery.",
                      flag_values=flag_values)
    flags.DEFINE_integer("latency_runs", 50, "TFLite invocations per model for the median latency.",
                         flag_values=flag_values)
    flags.DEFINE_integer("num_threads", 1, "TFLite interpreter threads.", flag_values=flag_values)
    flags.DEFINE_bool("compact", False, "Remove the units the masks disconnected (tfl.compact).",
                      flag_values=flag_values)
    flags.DEFINE_string("condense", None,
                        "Run sparse Dense/1x1 conv layers on condensed or sparse kernels where "
                        "faster: 'auto' (timed per layer), or force gather, gather_t, "
                        "gather_loop or sparse_matmul.", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 1, "Batch size the condensed kernels are timed at.",
                         flag_values=flag_values)
    flags.DEFINE_string("method", None, "Provenance: how the masks were made (e.g. rigl, imp).",
                        flag_values=flag_values)
    flags.DEFINE_float("level", None, "Provenance: the target sparsity.", flag_values=flag_values)
    flags.DEFINE_multi_string("gin_file", [], "Provenance: gin config file(s) of the run.",
                              flag_values=flag_values)


def load_checkpoint(path: str):
    """The tf_keras model saved at ``path``, MaskedLayers included."""
    import tf_lottery as tfl
    from tf_lottery._keras import keras
    from tf_lottery import _io
    if not _io.gfile.exists(path):
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    if _io.gfile.isdir(path):  # a SavedModel: TensorFlow reads it from any gfile path
        return keras.models.load_model(path, custom_objects=tfl.custom_objects(), compile=False)
    with _io.local_copy(path) as local:  # h5py reads local files only
        return keras.models.load_model(local, custom_objects=tfl.custom_objects(),
                                       compile=False)


def export_checkpoint(FLAGS=flags.FLAGS):
    """Runs the export the flags describe; returns the report (a dict)."""
    if not FLAGS.checkpoint or not FLAGS.output_dir:
        raise app.UsageError("--checkpoint and --output_dir are required")
    from tf_lottery import _io
    from tf_lottery.export import export
    model = load_checkpoint(FLAGS.checkpoint)
    gin_config = None
    if FLAGS.gin_file:
        gin_config = "\n".join(_io.read_bytes(f).decode("utf-8") for f in FLAGS.gin_file)
    provenance = {"method": FLAGS.method, "level": FLAGS.level, "gin_config": gin_config,
                  "checkpoint": (os.path.abspath(FLAGS.checkpoint)
                                 if _io.is_local(FLAGS.checkpoint) else FLAGS.checkpoint)}
    input_shape = [int(d) for d in FLAGS.input_shape] if FLAGS.input_shape else None
    return export(model, FLAGS.output_dir, overwrite=FLAGS.overwrite, provenance=provenance,
                  tflite=FLAGS.tflite, input_shape=input_shape, verify=FLAGS.verify,
                  latency_runs=FLAGS.latency_runs, num_threads=FLAGS.num_threads,
                  compact=FLAGS.compact, batch_size=FLAGS.batch_size,
                  condense=True if FLAGS.condense == "auto" else (FLAGS.condense or False))


def main(argv, FLAGS=flags.FLAGS):
    """absl main of ``tf-lottery export``."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    export_checkpoint(FLAGS)
