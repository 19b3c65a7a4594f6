"""Command-line entry points: ``tf-lottery train ...`` and ``tf-lottery export ...``.

Thin absl mains: flags -> gin -> ``tf_lottery.training.train.train``. ``tools/train.py``
and ``tools/export.py`` call the same functions (``run("train")``, ``run("export")``).

What a person sees: ``--help`` lists the command's own flags and exits 0; a mistake the
user can fix (a bad flag or gin value, a refused folder, missing data) is one line
``tf-lottery COMMAND: what is wrong and the fix`` and exit status 2 (``--verbosity=1`` or
``TF_LOTTERY_TRACEBACK=1`` show the traceback); Ctrl-C says where the run stopped and
that the same command resumes it (exit status 130).
"""
import json
import logging as pylogging
import os
import re
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
TRACEBACK_ENV = "TF_LOTTERY_TRACEBACK"

TRAIN_USAGE = """Trains with gin: dense, IMP (lottery tickets, controls, baselines), RigL / SET /
SNFS / static sparse, gradual magnitude pruning; gin_configs/ holds one file per paper setting.

  tf-lottery train --gin_file=gin_configs/CONFIG.gin [--gin_file=...] [--gin_param='...']
      --output_dir=DIR [--strategy=default|mirrored|multi_worker|tpu] [--tpu=...]
      [--data_dir=...] [--overwrite] [--export] [--mock_data=N]
      [--keras=2|3] [--backend=tensorflow|jax|torch]

--keras=3 builds the model and optimizer with Keras 3 (keras>=3) instead of tf_keras;
--backend picks Keras 3's backend (implies --keras=3) and is set before Keras loads (gin:
train.keras = 3, train.backend = 'jax'; the binary restarts itself to apply a backend that
only gin names).

--strategy=multi_worker reads the cluster from the TF_CONFIG environment variable (see the
README, "Multi-worker training"). Smoke run of any config: --gin_param='train.max_steps = 2'
or TF_LOTTERY_MAX_STEPS=2 (IMP: 2 levels of 2 iterations; other experiments: 2 training and
2 evaluation steps). Re-running the same command resumes an interrupted run; a finished run
is left as it is.
"""

EXPORT_USAGE = """Exports a run's model (any IMP level and kind, or a training run's model) or a
saved model as a plain SavedModel, dense and sparse TFLite, sparsity.json and a report.

  tf-lottery export --run_dir=RUN [--level=N] [--kind=ticket|reinit|random_mask|...]
      [--output_dir=DIR] [--overwrite] [--notflite] [--noverify]
  tf-lottery export --checkpoint=MODEL.h5 --output_dir=DIR
"""

TRAIN_FLAGS = ("gin_file", "gin_param", "output_dir", "strategy", "tpu", "data_dir",
               "overwrite", "export", "mock_data", "keras", "backend")
REEXEC_ENV = "TF_LOTTERY_REEXEC"
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
            "overwrite", False, "move a different tf-lottery run found in --output_dir aside "
            "(to OUTPUT_DIR.old-<time>) and start again; never touches other files"),
        "export": lambda: flags.DEFINE_bool(
            "export", False, "export the final model into OUTPUT_DIR/export"),
        "mock_data": lambda: flags.DEFINE_integer(
            "mock_data", 0, "N > 0: TFDS datasets are replaced by N random examples per "
            "split (tfds.testing.mock_data; smoke tests only)"),
        "keras": lambda: flags.DEFINE_string(
            "keras", None, "2: tf_keras models (the default), 3: Keras 3 models"),
        "backend": lambda: flags.DEFINE_string(
            "backend", None, "Keras 3 backend: tensorflow, jax or torch (implies --keras=3)"),
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
    # absl's --helpshort lists the key flags of the main module (sys.argv[0]): make these key.
    for name in TRAIN_FLAGS:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def forget_train_flags() -> None:
    """Removes the flags ``define_train_flags`` defined (for in-process callers, tests)."""
    while _DEFINED_HERE:
        name = _DEFINED_HERE.pop()
        if name in FLAGS:
            delattr(FLAGS, name)


# ------------------------------------------------------------------ messages

class UserError(Exception):
    """A mistake the user can fix; the binary prints its message on one line."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: gin's multi-line context (file, line, the
    binding) joined with spaces, carets and object addresses dropped."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and set(ln) != {"^"}]
    text = " ".join(lines) or type(error).__name__
    text = re.sub(r" ?\(<(function|class) [^>]*>\)", "", text)
    calls = re.findall(r"In call to configurable '([^']+)'", text)
    if calls:  # gin names every configurable on the way: the first one is where it failed
        text = re.sub(r" ?In call to configurable '[^']+'", "", text).rstrip()
        text += f" (in gin configurable '{calls[0]}')"
    return text


def _tracebacks_wanted() -> bool:
    verbosity = FLAGS["verbosity"].value if "verbosity" in FLAGS else 0
    return os.environ.get(TRACEBACK_ENV) == "1" or (verbosity or 0) >= 1


def _user_errors():
    """Exception types that are the user's to fix (bad values, refused folders, data)."""
    return (UserError, app.UsageError, flags.Error, ValueError, TypeError, KeyError,
            FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError)


def _fail(command: str, message: str):
    sys.stdout.flush()
    print(f"tf-lottery {command}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _where_it_stopped(output_dir) -> str:
    """Where an interrupted run stands, read from its folder."""
    from tf_lottery._io import gfile
    from tf_lottery.lottery import results

    if not output_dir or not gfile.exists(os.path.join(output_dir, "run.json")):
        return "nothing was saved yet"

    config = results.read_json(os.path.join(output_dir, "run.json"))
    if config.get("experiment") == "sparse_sweep":
        total = int(config["trials"]) * (len(config["methods"]) * len(config["sparsities"])
                                         + int(config["dense"]))
        done = len(gfile.glob(os.path.join(output_dir, "cells", "*", "trial_*", "metrics.json")))
        return f"{done} of {total} cells of the sweep are saved in {output_dir}/cells"
    if "levels" in config:
        levels = int(config["levels"])
        done = results.finished_levels(output_dir, levels)
        if done == 0:
            return f"level 0 of {levels} was in progress (no level is finished)"
        return (f"levels 0-{done - 1} of {levels} are saved in {output_dir}, level {done} "
                "was in progress")
    if gfile.exists(os.path.join(output_dir, "metrics.json")):
        return f"the run in {output_dir} had finished"
    return (f"the last finished epoch is saved in {os.path.join(output_dir, 'backup')}"
            if gfile.isdir(os.path.join(output_dir, "backup")) else
            "the first epoch was in progress")


def _guard(command: str, main, output_dir=lambda: None):
    """``main`` with one-line user errors (exit 2) and a readable Ctrl-C (exit 130)."""
    def guarded(argv):
        try:
            main(argv)
        except KeyboardInterrupt:
            sys.stdout.flush()
            print(f"\ntf-lottery {command}: interrupted; {_where_it_stopped(output_dir())}. "
                  "Run the same command again to resume.", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except _user_errors() as error:
            if _tracebacks_wanted():
                raise
            _fail(command, one_line(error))
    return guarded


# ------------------------------------------------------------------ train

def _parse_gin(files, bindings) -> None:
    """Parses gin files and bindings; an unknown configurable or parameter stops here,
    before any training, with gin's message naming the file and line."""
    from tf_lottery.training.train import parse_gin

    try:
        parse_gin(files, bindings)
    except (ValueError, KeyError, TypeError, IOError, SyntaxError) as error:
        raise UserError(f"bad gin configuration: {one_line(error)}") from error


def _readable_logs() -> None:
    """tf-lottery's INFO lines with a short prefix (time); TensorFlow's Python logger only
    for errors (its warnings about saving and tracing are known and harmless), unless
    ``--verbosity=1``."""
    from tf_lottery import _quiet

    handler = logging.get_absl_handler()
    handler.setFormatter(pylogging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    pylogging.getLogger("tf_lottery").setLevel(pylogging.INFO)
    if (FLAGS.verbosity or 0) < 1:
        logging.set_verbosity(logging.WARNING)
        pylogging.getLogger("tensorflow").setLevel(pylogging.ERROR)
        handler.addFilter(_quiet.RecordFilter())


def _keras_bindings():
    """gin bindings for --keras/--backend; sets KERAS_BACKEND before Keras 3 loads."""
    from tf_lottery.training import flavour

    bindings = []
    if FLAGS.keras is not None:
        try:
            version = flavour.check_keras(FLAGS.keras)
        except ValueError as error:
            raise UserError(str(error)) from None
        bindings.append(f"train.keras = {version}")
    if FLAGS.backend is not None:
        try:
            flavour.select_backend(FLAGS.backend)
        except ValueError as error:
            raise UserError(str(error)) from None
        if FLAGS.keras is not None and str(FLAGS.keras).strip() == "2":
            raise UserError(f"--backend={FLAGS.backend} selects a Keras 3 backend, but "
                            "--keras=2 asks for tf_keras: drop --keras=2 or pass --keras=3")
        bindings += ["train.keras = 3", f"train.backend = '{FLAGS.backend}'"]
    return bindings


def _apply_gin_backend() -> None:
    """A backend named only in gin (``train.backend``) differing from the one Keras 3
    loaded with: restart the binary with KERAS_BACKEND set (once), else a one-line error."""
    import gin
    from tf_lottery.training import flavour

    try:
        wanted = gin.query_parameter("train.backend")
    except ValueError:
        return
    if wanted is None or wanted == flavour.loaded_backend():
        return
    try:
        flavour.check_backend(wanted)
    except ValueError as error:
        raise UserError(str(error)) from None
    script = sys.argv[0] if sys.argv else ""
    if os.environ.get(REEXEC_ENV) != "1" and script.endswith((".py", "tf-lottery")) and \
            os.path.isfile(script):
        sys.stdout.flush()
        sys.stderr.flush()
        env = dict(os.environ, KERAS_BACKEND=wanted, **{REEXEC_ENV: "1"})
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    flavour.select_backend(wanted)  # raises the one-line error with the fix


def train_main(argv) -> None:
    """Parses gin (errors name the file and line, before any training) and trains."""
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; gin bindings go in "
                        "--gin_param='...'")
    if not FLAGS.output_dir:
        raise UserError("--output_dir is required: the folder the run writes into (a new "
                        "one, or the folder of the run to resume)")
    if not FLAGS.gin_file and not FLAGS.gin_param:
        raise UserError("no configuration: give --gin_file=gin_configs/CONFIG.gin (see "
                        "gin_configs/ and the README)")
    bindings = list(FLAGS.gin_param) + _keras_bindings()
    import tf_lottery  # noqa: F401  (registers every configurable; loads Keras 3)
    from tf_lottery.training import train as training

    if FLAGS.mock_data:
        bindings.append(f"train.mock_data = {int(FLAGS.mock_data)}")
    _parse_gin(list(FLAGS.gin_file), bindings)
    _apply_gin_backend()
    _readable_logs()
    kwargs = {"overwrite": FLAGS.overwrite}
    for name in ("strategy", "tpu", "data_dir", "export"):
        if FLAGS[name].present:
            kwargs[name] = FLAGS[name].value
    if (FLAGS.verbosity or 0) >= 1:
        kwargs["verbose"] = 2  # one line per epoch
    result = training.train(FLAGS.output_dir, **kwargs)
    print("tf-lottery result: " + json.dumps(training.summary(result), default=str), flush=True)


# ------------------------------------------------------------------ export

def export_main(argv) -> None:
    """Exports a run's model or a saved model (see ``tf_lottery.export.cli``)."""
    from tf_lottery.export import cli as export_cli

    _readable_logs()
    export_cli.main(argv)


# ------------------------------------------------------------------ running

def _help_requested(argv) -> bool:
    return any(a in ("-h", "--help", "-?", "--helpshort") for a in argv[1:])


def _print_help(usage: str, names) -> None:
    """The usage text and the command's own flags (``--helpfull`` lists every flag)."""
    print(usage.rstrip() + "\n\nflags:")
    for name in names:
        flag = FLAGS[name]
        label = f"--[no]{name}" if isinstance(flag, flags.BooleanFlag) else f"--{name}"
        default = "" if flag.default in (None, [], "") else f" (default: {flag.default_as_str})"
        print(f"  {label}: {flag.help}{default}")
    print("  --verbosity=1: tracebacks for errors, one line per epoch, TensorFlow's C++ logs"
          "\n\nTry --helpfull for every flag (TensorFlow's and absl's).")


def _parse_or_fail(command: str, argv) -> None:
    """Parses ``argv`` to check it (a bad flag is a one-line error), then unparses so
    ``app.run`` parses it again from scratch."""
    try:
        FLAGS(argv)
    except flags.Error as error:
        _fail(command, f"{one_line(error)} (tf-lottery {command} --help lists the flags)")
    finally:
        FLAGS.unparse_flags()


def run(command: str, argv=None) -> None:
    """Defines the flags of ``command`` and runs its main through absl."""
    argv = list(sys.argv if argv is None else argv)
    if command == "train":
        define_train_flags()
        usage, names, main = TRAIN_USAGE, TRAIN_FLAGS, train_main
    elif command == "export":
        from tf_lottery.export import cli as export_cli

        export_cli.define_flags()
        usage, names, main = EXPORT_USAGE, export_cli.FLAG_NAMES, export_main
    else:
        print(f"tf-lottery: unknown command {command!r}; use 'tf-lottery train' or "
              "'tf-lottery export' (--help lists their flags)", file=sys.stderr)
        raise SystemExit(2)
    if _help_requested(argv):
        _print_help(usage, names)
        raise SystemExit(0)
    _parse_or_fail(command, argv)
    output_dir = (lambda: FLAGS.output_dir) if command == "train" else (lambda: None)
    app.run(_guard(command, main, output_dir), argv=argv)


def main() -> None:
    """``tf-lottery COMMAND [--flags]``; ``tf-lottery COMMAND --help`` lists the flags."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print("usage: tf-lottery {train,export} [--flags]   (tf-lottery train --help, "
              "tf-lottery export --help)")
        raise SystemExit(0 if len(sys.argv) >= 2 else 2)
    run(sys.argv[1], [f"{sys.argv[0]} {sys.argv[1]}"] + sys.argv[2:])
