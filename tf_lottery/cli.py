"""Command-line entry points: ``tf-lottery train ...`` and ``tf-lottery export ...``.

Thin absl mains: flags -> gin -> ``tf_lottery.training.train.train``. ``tools/train.py``
and ``tools/export.py`` call the same functions.
"""
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS


def define_train_flags() -> None:
    """The flags of ``tf-lottery train`` (TF convention: gin files plus bindings)."""
    flags.DEFINE_multi_string("gin_file", [], "gin config file(s), applied in order")
    flags.DEFINE_multi_string("gin_param", [], "gin bindings, e.g. "
                              "--gin_param='IterativeMagnitudePruning.levels = 5'")
    flags.DEFINE_string("output_dir", None, "where the run writes its results")
    flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                      "tf.distribute strategy")
    flags.DEFINE_string("tpu", None, "TPU name or address, with --strategy=tpu")
    flags.DEFINE_string("data_dir", None, "tensorflow-datasets data_dir")
    flags.DEFINE_bool("overwrite", False, "replace a different run found in --output_dir")
    flags.mark_flag_as_required("output_dir")


def train_main(argv) -> None:
    """Parses gin (errors name the file and line, before any training) and trains."""
    del argv
    import gin
    import tf_lottery  # noqa: F401  (registers every configurable)
    from tf_lottery.training import train as training

    bindings = list(FLAGS.gin_param)
    if FLAGS.data_dir:
        bindings.append(f"data.data_dir = {FLAGS.data_dir!r}")
    gin.parse_config_files_and_bindings(FLAGS.gin_file, bindings)
    logging.set_verbosity(logging.INFO)
    training.train(FLAGS.output_dir, strategy=FLAGS.strategy, tpu=FLAGS.tpu,
                   overwrite=FLAGS.overwrite)


def run(command: str, argv=None) -> None:
    """Defines the flags of ``command`` and runs its main through absl."""
    argv = list(sys.argv if argv is None else argv)
    if command == "train":
        define_train_flags()
        app.run(train_main, argv=argv)
    elif command == "export":
        from tf_lottery.export import cli as export_cli
        export_cli.define_flags()
        app.run(export_cli.main, argv=argv)
    else:
        raise SystemExit(f"unknown command {command!r}; use 'train' or 'export'")


def main() -> None:
    """``tf-lottery COMMAND [--flags]``; ``tf-lottery COMMAND --help`` lists the flags."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print("usage: tf-lottery {train,export} [--flags]   (tf-lottery train --help)")
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    run(sys.argv[1], [f"{sys.argv[0]} {sys.argv[1]}"] + sys.argv[2:])
