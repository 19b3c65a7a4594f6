"""Command-line entry points: ``tf-lottery train ...`` and ``tf-lottery export ...``.

Thin absl mains: flags -> gin -> ``tf_lottery.training.train.train``. ``tools/train.py``
calls the same function (``run("train")``).
"""
import json
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS

TRAIN_USAGE = """Trains with gin: dense, IMP (lottery tickets, controls, baselines), RigL / SET /
SNFS / static sparse, gradual magnitude pruning; gin_configs/ holds one file per paper setting.

  tf-lottery train --gin_file=gin_configs/CONFIG.gin [--gin_file=...] [--gin_param='...']
      --output_dir=DIR [--strategy=default|mirrored|multi_worker|tpu] [--tpu=...]
      [--data_dir=...] [--overwrite] [--export] [--mock_data=N]

--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable (see the
README, "Multi-worker training"). Smoke run of any config: --gin_param='train.max_steps = 2'
(IMP: 2 levels of 2 iterations; other experiments: 2 training and 2 evaluation steps).
"""

TRAIN_FLAGS = ("gin_file", "gin_param", "output_dir", "strategy", "tpu", "data_dir",
               "overwrite", "export", "mock_data")
_DEFINED_HERE = []


def _train_flag_definitions():
    return {
        "gin_file": lambda: flags.DEFINE_multi_string(
            "gin_file", [], "gin config file(s), applied in order"),
        "gin_param": lambda: flags.DEFINE_multi_string(
            "gin_param", [], "gin bindings applied after the files, e.g. "
            "--gin_param='train.max_steps = 2'"),
        "output_dir": lambda: flags.DEFINE_string(
            "output_dir", None, "where the run writes its results (required)"),
        "strategy": lambda: flags.DEFINE_enum(
            "strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
            "tf.distribute strategy (multi_worker reads the cluster from TF_CONFIG)"),
        "tpu": lambda: flags.DEFINE_string(
            "tpu", None, "TPU name or address, with --strategy=tpu"),
        "data_dir": lambda: flags.DEFINE_string(
            "data_dir", None, "tensorflow-datasets data_dir"),
        "overwrite": lambda: flags.DEFINE_bool(
            "overwrite", False, "replace a different run found in --output_dir"),
        "export": lambda: flags.DEFINE_bool(
            "export", False, "export the final model into OUTPUT_DIR/export"),
        "mock_data": lambda: flags.DEFINE_integer(
            "mock_data", 0, "N > 0: TFDS datasets are replaced by N random examples per "
            "split (tfds.testing.mock_data; smoke tests only)"),
    }


def define_train_flags() -> None:
    """The flags of ``tf-lottery train`` (TF convention: gin files plus bindings).

    A flag already defined in this process (a second call, or a tool sharing the name)
    is reused; every flag starts from its default.
    """
    for name, define in _train_flag_definitions().items():
        if name not in FLAGS:
            define()
            _DEFINED_HERE.append(name)
    FLAGS.unparse_flags()
    # absl's --help lists the key flags of the main module (sys.argv[0]): make these key.
    for name in TRAIN_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def forget_train_flags() -> None:
    """Removes the flags ``define_train_flags`` defined (for in-process callers, tests)."""
    while _DEFINED_HERE:
        name = _DEFINED_HERE.pop()
        if name in FLAGS:
            delattr(FLAGS, name)


def _parse_gin(files, bindings) -> None:
    """Parses gin files and bindings; an unknown configurable or parameter stops here,
    before any training, with gin's message naming the file and line."""
    from tf_lottery.training.train import parse_gin

    try:
        parse_gin(files, bindings)
    except (ValueError, KeyError, TypeError, IOError, SyntaxError) as error:
        raise SystemExit(f"tf-lottery train: bad gin configuration: {error}") from error


def train_main(argv) -> None:
    """Parses gin (errors name the file and line, before any training) and trains."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; bindings go in --gin_param")
    if not FLAGS.output_dir:
        raise app.UsageError("--output_dir is required")
    import tf_lottery  # noqa: F401  (registers every configurable)
    from tf_lottery.training import datasets
    from tf_lottery.training import train as training

    bindings = list(FLAGS.gin_param)
    if FLAGS.mock_data:
        bindings.append(f"train.mock_data = {int(FLAGS.mock_data)}")
    _parse_gin(list(FLAGS.gin_file), bindings)
    logging.set_verbosity(logging.INFO)
    kwargs = {"overwrite": FLAGS.overwrite}
    for name in ("strategy", "tpu", "data_dir", "export"):
        if FLAGS[name].present:
            kwargs[name] = FLAGS[name].value
    try:
        result = training.train(FLAGS.output_dir, **kwargs)
    except datasets.DatasetNotPreparedError as error:
        raise SystemExit(f"tf-lottery train: {error}") from error
    print("tf-lottery result: " + json.dumps(training.summary(result), default=str), flush=True)


def run(command: str, argv=None) -> None:
    """Defines the flags of ``command`` and runs its main through absl."""
    argv = list(sys.argv if argv is None else argv)
    if command == "train":
        define_train_flags()
        main_module = sys.modules.get("__main__")
        if main_module is not None and not getattr(main_module, "__doc__", None):
            main_module.__doc__ = TRAIN_USAGE
        app.run(train_main, argv=argv)
    elif command == "export":
        try:
            from tf_lottery.export import cli as export_cli
        except ImportError:
            raise SystemExit("tf-lottery export is not available in this version; run "
                             "python tools/export.py --help") from None
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
