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
    code = _cli(f"--gin_file={bad}", f"--output_dir={output_dir}")
    assert isinstance(code, str) and "bad gin configuration" in code
    assert "lerning_rate" in code and str(bad) in code and "line 2" in code
    assert not output_dir.exists()
    code = _cli(f"--gin_file={DIGITS_RIGL}", "--gin_param=sparse_training.updater = @Rigl",
                f"--output_dir={output_dir}")
    assert "Rigl" in code and not output_dir.exists()
    assert _cli(f"--gin_file={DIGITS_RIGL}") == 1  # --output_dir is required (usage error)


def test_missing_tfds_data_says_how_to_prepare_it(tmp_path):
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
    assert code.startswith("tf-lottery train: ")
    assert "ILSVRC2012_img_train.tar" in code and "download_and_prepare()" in code
    assert not output_dir.exists()


def test_output_dir_holding_a_different_run_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    _smoke(DIGITS_RIGL)
    first = training.train(str(output_dir))
    assert (output_dir / "metrics.json").is_file()

    gin.clear_config()  # the same run again: finished, nothing retrained
    _smoke(DIGITS_RIGL)
    again = training.train(str(output_dir))
    assert again["checksums"] == first["checksums"]

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
    with pytest.raises(ValueError, match="not an IMP run folder"):
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
    code = _cli("--help")
    assert code in (0, 1, None)  # absl's --help exits with status 1
    text = capsys.readouterr().out
    for name in FLAG_NAMES:
        assert f"--{name}" in text or f"--[no]{name}" in text, name


def test_console_script_help_lists_the_flags():
    script = shutil.which("tf-lottery", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the tf-lottery console script is not installed (pip install -e .)")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([script, "train", "--help"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # absl's --help exits 1
    for name in FLAG_NAMES:
        assert f"--{name}" in done.stdout or f"--[no]{name}" in done.stdout, name
    assert "TF_CONFIG" in done.stdout  # the usage text explains --strategy=multi_worker


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
