"""The training binary: flags, gin errors, missing data, run folders, export, strategies.

``tf-lottery train`` runs in-process through ``tf_lottery.cli.run`` (absl's ``app.run``
ends with SystemExit), except one ``--help`` through the installed console script.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import gin
import pytest

from tf_lottery import cli
from tf_lottery._quiet import harmless
from tf_lottery._keras import keras, tf
from tf_lottery.training import datasets
from tf_lottery.training import train as training

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "gin_configs"
DIGITS_RIGL = str(CONFIGS / "digits_lenet300100_rigl.gin")
FLAG_NAMES = ("gin_file", "gin_param", "output_dir", "strategy", "tpu", "data_dir",
              "overwrite", "export", "mock_data")


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    keras.backend.clear_session()
    yield
    gin.clear_config()


@pytest.fixture(scope="module", autouse=True)
def _forget_flags():
    yield
    cli.forget_train_flags()  # other tests may define flags of the same names


def _smoke(path, *extra):
    training.parse_gin([path], ["train.max_steps = 2", "sparse_training.verbose = 0",
                                "IterativeMagnitudePruning.verbose = 0", *extra])


def _cli(*args):
    """Runs ``tf-lottery train ARGS`` in-process; returns SystemExit's code."""
    with pytest.raises(SystemExit) as stop:
        cli.run("train", ["tf-lottery train", *args])
    return stop.value.code


def _error_line(capsys):
    """The one line a user error prints on stderr (TensorFlow's C++ lines aside: tests
    do not install the binaries' stderr filter)."""
    err = [ln for ln in capsys.readouterr().err.splitlines()
           if ln.strip() and not harmless(ln) and not ln.startswith(("E0000", "I0000", "W0000"))]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------ bad input, before training

def test_typo_in_a_binding_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text(f"include '{DIGITS_RIGL}'\n\nsparse_training.sparsty = 0.5\n")
    with pytest.raises(ValueError) as error:
        training.parse_gin([str(bad)])
    message = str(error.value)
    assert "sparsty" in message and str(bad) in message and "line 3" in message

    gin.clear_config()
    unknown = tmp_path / "unknown.gin"
    unknown.write_text("train.experiment = @sparse_training\nRigLL.delta_t = 10\n")
    with pytest.raises(ValueError) as error:
        training.parse_gin([str(unknown)])
    assert "RigLL" in str(error.value) and "line 2" in str(error.value)


def test_cli_stops_on_a_bad_config_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.gin"
    bad.write_text(f"include '{DIGITS_RIGL}'\nmake_optimizer.lerning_rate = 0.1\n")
    output_dir = tmp_path / "run"
    assert _cli(f"--gin_file={bad}", f"--output_dir={output_dir}") == 2
    line = _error_line(capsys)
    assert line.startswith("tf-lottery train: bad gin configuration: ")
    assert "lerning_rate" in line and str(bad) in line and "line 2" in line
    assert not output_dir.exists()
    assert _cli(f"--gin_file={DIGITS_RIGL}", "--gin_param=sparse_training.updater = @Rigl",
                f"--output_dir={output_dir}") == 2
    assert "Rigl" in _error_line(capsys) and not output_dir.exists()
    assert _cli(f"--gin_file={DIGITS_RIGL}") == 2
    assert _error_line(capsys).startswith("tf-lottery train: --output_dir is required")
    assert _cli(f"--gin_file={DIGITS_RIGL}", "--strategy=gpus",
                f"--output_dir={output_dir}") == 2
    line = _error_line(capsys)
    assert line.startswith("tf-lottery train: flag --strategy=gpus: ") and "mirrored" in line


@pytest.mark.parametrize("binding, says", [
    ("make_optimizer.name = 'adm'", "unknown optimizer 'adm'; use 'adam', 'adamw' or 'sgd' "
                                    "(in gin configurable 'make_optimizer')"),
    ("sparse_training.sparsity = 1.5", "1.5"),
])
def test_a_bad_value_leaves_no_folder_and_the_corrected_command_runs(
        tmp_path, capsys, binding, says):
    output_dir = tmp_path / "run"
    smoke = ("--gin_param=train.max_steps = 2", f"--gin_file={DIGITS_RIGL}",
             f"--output_dir={output_dir}")
    assert _cli(*smoke, f"--gin_param={binding}") == 2
    line = _error_line(capsys)
    assert line.startswith("tf-lottery train: ") and says in line
    assert "<function" not in line and not output_dir.exists()
    gin.clear_config()
    assert _cli(*smoke) in (None, 0)
    assert (output_dir / "metrics.json").is_file()


def test_user_errors_are_one_line_with_the_fix_and_tracebacks_on_request(tmp_path, capsys,
                                                                         monkeypatch):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("mine")
    args = (f"--gin_file={DIGITS_RIGL}", "--gin_param=train.max_steps = 2",
            f"--output_dir={mine}", "--overwrite")
    assert _cli(*args) == 2
    line = _error_line(capsys)
    assert line.startswith(f"tf-lottery train: {mine} is not a tf-lottery run folder")
    assert "choose a new or empty output_dir" in line
    assert (mine / "thesis.tex").read_text() == "mine" and os.listdir(mine) == ["thesis.tex"]
    gin.clear_config()
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(ValueError, match="not a tf-lottery run folder"):
        cli.run("train", ["tf-lottery train", *args])


def test_ctrl_c_says_where_the_run_stopped_and_that_it_resumes(tmp_path, capsys, monkeypatch):
    from tf_lottery.lottery.imp import IterativeMagnitudePruning

    real_level = IterativeMagnitudePruning._level

    def interrupted(self, level, model, folder):
        if level == 1:
            raise KeyboardInterrupt
        return real_level(self, level, model, folder)

    monkeypatch.setattr(IterativeMagnitudePruning, "_level", interrupted)
    output_dir = tmp_path / "run"
    args = (f"--gin_file={CONFIGS / 'digits_lenet300100_imp.gin'}",
            "--gin_param=train.max_steps = 2", f"--output_dir={output_dir}")
    assert _cli(*args) == 130
    err = capsys.readouterr().err
    assert (f"tf-lottery train: interrupted; levels 0-0 of 2 are saved in {output_dir}, "
            "level 1 was in progress. Run the same command again to resume.") in err
    assert "Traceback" not in err
    monkeypatch.setattr(IterativeMagnitudePruning, "_level", real_level)
    gin.clear_config()
    assert _cli(*args) in (None, 0)
    assert (output_dir / "level_1" / "metrics.json").is_file()

    operative = (output_dir / "operative_config.gin").read_bytes()  # complete, written once
    assert b"lenet_300_100." in operative and b"make_optimizer.learning_rate = 0.0012" in operative
    gin.clear_config()
    assert _cli(*args) in (None, 0)  # a repeat of the finished run
    assert (output_dir / "operative_config.gin").read_bytes() == operative


def test_missing_tfds_data_says_how_to_prepare_it(tmp_path, capsys):
    empty = tmp_path / "tfds"
    output_dir = tmp_path / "run"
    _smoke(str(CONFIGS / "cifar10_conv2_imp.gin"))
    with pytest.raises(datasets.DatasetNotPreparedError) as error:
        training.train(str(output_dir), data_dir=str(empty))
    message = str(error.value)
    assert "'cifar10' is not prepared" in message
    assert f"tfds.builder('cifar10', data_dir='{empty}').download_and_prepare()" in message
    assert not output_dir.exists()

    gin.clear_config()  # the binary: a clean message, no traceback
    code = _cli(f"--gin_file={CONFIGS / 'imagenet_resnet50_rigl_erk80.gin'}",
                "--gin_param=train.max_steps = 2", f"--data_dir={empty}",
                f"--output_dir={output_dir}")
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith("tf-lottery train: ")
    assert "ILSVRC2012_img_train.tar" in line and "download_and_prepare()" in line
    assert not output_dir.exists()


def test_output_dir_holding_a_different_run_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    _smoke(DIGITS_RIGL)
    first = training.train(str(output_dir))
    assert (output_dir / "metrics.json").is_file()
    operative = (output_dir / "operative_config.gin").read_text()
    assert "lenet_300_100." in operative and "make_optimizer.learning_rate" in operative
    files = {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()}

    gin.clear_config()  # the same run again: finished, nothing retrained or rewritten
    _smoke(DIGITS_RIGL)
    again = training.train(str(output_dir))
    assert again["checksums"] == first["checksums"]
    assert {p: p.read_bytes() for p in output_dir.rglob("*") if p.is_file()} == files

    from tf_lottery.export.run_folder import load_run_model  # what tf-lottery export loads
    model, provenance = load_run_model(str(output_dir))
    assert provenance["method"] == "RigL" and training.checksums(model) == first["checksums"]

    gin.clear_config()  # a different run into the same folder
    _smoke(DIGITS_RIGL, "sparse_training.sparsity = 0.5")
    with pytest.raises(ValueError, match="holds a different run"):
        training.train(str(output_dir))
    gin.clear_config()
    _smoke(str(CONFIGS / "digits_lenet300100_imp.gin"))
    with pytest.raises(ValueError, match="holds a different run"):
        training.train(str(output_dir))
    assert json.loads((output_dir / "metrics.json").read_text())["checksums"] == \
        first["checksums"]

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    gin.clear_config()
    _smoke(DIGITS_RIGL)
    with pytest.raises(ValueError, match="not a tf-lottery run folder"):
        training.train(str(stray))
    assert (stray / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ runs

def test_cli_smoke_run_on_mock_tfds_data(tmp_path, capsys):
    output_dir = tmp_path / "run"
    code = _cli(f"--gin_file={CONFIGS / 'mnist_lenet300100_imp.gin'}",
                "--gin_param=train.max_steps = 2", "--gin_param=data.batch_size = 4",
                "--gin_param=IterativeMagnitudePruning.verbose = 0",
                "--mock_data=8", f"--data_dir={tmp_path / 'tfds'}",
                f"--output_dir={output_dir}")
    assert code in (None, 0)
    out = capsys.readouterr().out
    result = json.loads(out.split("tf-lottery result: ")[1].splitlines()[0])
    assert [r["level"] for r in result["rows"]] == [0, 1, 1]  # ticket, ticket, reinit
    assert result["checksums"]["masks"]
    for name in ("summary.json", "summary.csv", "operative_config.gin", "run.json",
                 "level_1/masks.npz", "level_1/weights.h5"):
        assert (output_dir / name).is_file(), name
    assert any((output_dir / "tensorboard").rglob("events.*"))
    config = (output_dir / "config.gin").read_text()
    assert "train.mock_data = 8" in config  # a mock run never resumes as a real one
    assert "data_dir" not in config  # --data_dir is not part of the run's identity
    assert not (output_dir / "export").exists()


def test_export_when_asked(tmp_path):
    pytest.importorskip("tf_lottery.export")
    output_dir = tmp_path / "run"
    _smoke(DIGITS_RIGL, "train.export = True")
    result = training.train(str(output_dir))
    export = output_dir / "export"
    assert (export / "saved_model" / "saved_model.pb").is_file()
    provenance = json.loads((export / "sparsity.json").read_text())["provenance"]
    assert provenance["method"] == "RigL" and provenance["level"] == pytest.approx(0.9)
    assert provenance["measured_sparsity"] == pytest.approx(result["sparsity"], abs=1e-6)


def test_mirrored_strategy_and_train_arguments(tmp_path):
    _smoke(DIGITS_RIGL, "sparse_training.updater = @SET", "train.max_steps = 3")
    result = training.train(str(tmp_path / "run"), strategy="mirrored")
    assert result["method"] == "SET" and result["steps_per_epoch"] == 3
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="unknown strategy"):
        training.make_strategy("parameter_server")


def test_gradual_pruning_smoke_reaches_its_final_sparsity(tmp_path):
    _smoke(DIGITS_RIGL, "sparse_training.sparsity = 0.0",
           "sparse_training.updater = @GradualMagnitudePruning",
           "GradualMagnitudePruning.schedule = @PolynomialDecay()",
           "PolynomialDecay.initial_sparsity = 0.0", "PolynomialDecay.final_sparsity = 0.6",
           "PolynomialDecay.begin_step = 100", "PolynomialDecay.end_step = 1000")
    result = training.train(str(tmp_path / "run"))
    assert result["method"] == "GradualMagnitudePruning"
    assert result["sparsity"] == pytest.approx(0.6, abs=0.01)


def test_is_chief():
    def strategy(task_type, task_id, cluster):
        spec = types.SimpleNamespace(as_dict=lambda: cluster)
        resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                         cluster_spec=lambda: spec)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:2"]}
    assert training.is_chief(tf.distribute.get_strategy())
    assert training.is_chief(strategy(None, None, {}))
    assert training.is_chief(strategy("worker", 0, workers))
    assert not training.is_chief(strategy("worker", 1, workers))
    assert training.is_chief(strategy("chief", 0, {"chief": ["c:0"], **workers}))
    assert not training.is_chief(strategy("worker", 0, {"chief": ["c:0"], **workers}))


# ------------------------------------------------------------------ help

def test_tools_train_help_lists_the_flags(capsys):
    assert _cli("--help") == 0
    text = capsys.readouterr().out
    for name in FLAG_NAMES:
        assert f"--{name}" in text or f"--[no]{name}" in text, name
    assert "--helpfull" in text


def test_export_help_lists_its_flags_and_exits_0():
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "export.py"), "--help"],
                          capture_output=True, text=True, timeout=180,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("run_dir", "level", "kind", "checkpoint", "output_dir", "overwrite"):
        assert f"--{name}:" in done.stdout or f"--[no]{name}:" in done.stdout, name
    assert done.stderr == ""


def test_console_script_help_lists_the_flags():
    script = shutil.which("tf-lottery", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the tf-lottery console script is not installed (pip install -e .)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([script, "train", "--help"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in FLAG_NAMES:
        assert f"--{name}" in done.stdout or f"--[no]{name}" in done.stdout, name
    assert "TF_CONFIG" in done.stdout  # the usage text explains --strategy=multi_worker


def test_stderr_filter_drops_known_noise_and_keeps_everything_else():
    """The binaries' fd-2 filter (tf_lottery._quiet), in a process without TensorFlow:
    known-harmless lines go, real errors and a traceback printed at exit stay."""
    script = f"""
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("q", {str(ROOT / 'tf_lottery' / '_quiet.py')!r})
q = importlib.util.module_from_spec(spec); spec.loader.exec_module(q)
q.StderrFilter()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"E0000 00:00:1.0  1 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool which is not\\n")
os.write(2, b"E0000 00:00:1.0  1 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\\n")
os.write(2, b"I0000 00:00:1.0  1 sharding_util.cc:1] Sharding callback duration: 12\\n")
os.write(2, b"E0000 00:00:1.0  1 some_op.cc:1] a real error\\n")
raise SystemExit("tf-lottery train: the last line")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines() == ["E0000 00:00:1.0  1 some_op.cc:1] a real error",
                                        "tf-lottery train: the last line"]


@pytest.mark.parametrize("mask_init", ["snip", "synflow"])
def test_sparse_training_prunes_at_initialisation(tmp_path, mask_init):
    _smoke(DIGITS_RIGL, "sparse_training.updater = None", "sparse_training.sparsity = 0.95",
           "sparse_training.distribution = 'global'",
           f"sparse_training.mask_init = '{mask_init}'")
    result = training.train(str(tmp_path / "run"))
    assert (result["method"], result["mask_init"]) == ("static", mask_init)
    assert result["sparsity"] == pytest.approx(0.95, abs=1e-4)
    layers = {r["layer"]: r["sparsity"] for r in result["layers"][:-1]}
    assert len(set(layers.values())) == 3  # one global threshold: layers differ
