"""``tfl.export`` of Keras 3 models (Keras 3's own ``model.export``), run once per backend by
tests/test_keras3.py. The SavedModel is checked in a fresh process without tf_lottery."""
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.masking import selection

L = keras.layers
BACKEND = keras.config.backend()


def _trained_sparse():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), name="features")
    x = L.Dense(16, activation="relu", name="d1")(inputs)
    model = keras.Model(inputs, L.Dense(3, name="d2")(x), name="small")
    sparse = tfl.sparsify(model, 0.75, "uniform", seed=0)
    rng = np.random.default_rng(0)
    sparse.compile(keras.optimizers.Adam(0.01), "mse")
    sparse.fit(rng.normal(size=(32, 12)).astype("float32"),
               rng.normal(size=(32, 3)).astype("float32"), epochs=1, batch_size=8, verbose=0)
    return sparse


def test_export_saved_model_verified_without_tf_lottery(tmp_path):
    sparse = _trained_sparse()
    if BACKEND == "torch":  # Keras 3.15 cannot write a SavedModel from PyTorch
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow or jax"):
            tfl.export(sparse, tmp_path / "export", verbose=False)
        assert os.listdir(tmp_path) == []
        sparse.save(tmp_path / "m.keras")  # the command line says it in one line
        done = subprocess.run(
            [sys.executable, "-m", "tf_lottery", "export", f"--checkpoint={tmp_path}/m.keras",
             f"--output_dir={tmp_path}/out"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 2, done.stderr[-3000:]
        assert done.stderr.strip().splitlines()[-1].startswith("tf-lottery export: Keras ")
        assert "KERAS_BACKEND=tensorflow or jax" in done.stderr
        assert not os.path.exists(tmp_path / "out")
        return
    masks = tfl.get_masks(sparse)
    sample = np.random.default_rng(1).normal(size=(5, 12)).astype("float32")
    expected = keras.ops.convert_to_numpy(sparse(sample))
    path = tmp_path / "export"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = tfl.export(sparse, path, sample=sample, latency_runs=3, verbose=False)
    zeros = sum(selection.count_zeros(m.size, 0.75) for m in masks.values())
    check = report["verification"]
    assert check["tf_lottery_imported"] is False and check["batch_size"] == 5
    assert check["max_abs_diff"] <= 1e-5
    assert check["masked_weights_checked"] == 2 and check["variables"] == 4
    assert check["nonzeros"] == check["nonzeros_expected"]
    assert report["prunable"]["params"] == 12 * 16 + 16 * 3
    assert report["prunable"]["active"] == 12 * 16 + 16 * 3 - zeros
    assert report["keras"]["backend"] == BACKEND
    assert report["flops"]["dense"] == 12 * 16 + 16 * 3
    assert report["signature"]["inputs"] == ["features"]
    with open(path / "export_report.json") as f:
        assert json.load(f)["verification"] == check
    with open(path / "sparsity.json") as f:
        saved = json.load(f)
    assert saved["total"]["active"] == report["prunable"]["active"]
    assert saved["versions"]["keras_backend"] == BACKEND
    if BACKEND == "tensorflow":
        assert sorted(os.listdir(path)) == ["export_report.json", "model_dense.tflite",
                                            "model_sparse.tflite", "saved_model",
                                            "sparsity.json"]
        assert report["tflite"]["error"] is None
        assert report["latency"]["runs"] == 3
    else:  # Keras 3.15 writes LiteRT from the TensorFlow backend only
        assert sorted(os.listdir(path)) == ["export_report.json", "saved_model",
                                            "sparsity.json"]
        assert "KERAS_BACKEND=tensorflow" in report["tflite"]["error"]
        assert any("no LiteRT files" in str(w.message) for w in caught)
    # the masked model is stripped, not changed: same outputs, masks, zeros
    np.testing.assert_allclose(keras.ops.convert_to_numpy(sparse(sample)), expected, rtol=1e-6)
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(mask, masks[key])
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tfl.export(sparse, path, tflite=False, verbose=False)
    again = tfl.export(sparse, path, overwrite=True, tflite=False, verbose=False)
    assert sorted(os.listdir(path)) == ["export_report.json", "saved_model", "sparsity.json"]
    assert again["verification"]["nonzeros"] == check["nonzeros"]


def test_export_refuses_tf_keras_only_options(tmp_path):
    with pytest.raises(ValueError, match="not available for Keras 3 models"):
        tfl.export(_trained_sparse(), tmp_path / "e", compact=True, verbose=False)
    assert not os.path.exists(tmp_path / "e")


def test_export_cli_loads_a_keras3_file(tmp_path):
    from tf_lottery.export import cli
    sparse = _trained_sparse()
    path = str(tmp_path / "sparse.keras")
    sparse.save(path)
    loaded = cli.load_checkpoint(path)
    assert isinstance(loaded, keras.Model)
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(tfl.get_masks(loaded)[key], mask)


def test_export_two_inputs_and_named_outputs(tmp_path):
    keras.utils.set_random_seed(1)
    a, b = keras.Input((5,), name="a"), keras.Input((3,), name="b")
    joined = L.Concatenate()([L.Dense(6, name="da")(a), b])
    model = keras.Model([a, b], {"score": L.Dense(1, name="s")(joined),
                                 "logits": L.Dense(2, name="l")(joined)})
    sparse = tfl.sparsify(model, 0.5, "uniform", seed=0)
    if BACKEND == "torch":  # no SavedModel export on PyTorch (see the first test)
        with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow or jax"):
            tfl.export(sparse, tmp_path / "e", tflite=False, verbose=False)
        return
    report = tfl.export(sparse, tmp_path / "e", tflite=False, verbose=False)
    assert report["signature"]["inputs"] == ["a", "b"]
    assert sorted(report["signature"]["outputs"]) == ["logits", "score"]
    assert report["verification"]["max_abs_diff"] <= 1e-5
    assert report["verification"]["masked_weights_checked"] == 3


# ------------------------------------------------------------------ run folders

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:240], y[:240].astype("int32")), (x[240:360], y[240:360].astype("int32"))


def _mlp():
    inputs = keras.Input((64,), name="pixels")
    h = L.Dense(24, activation="relu", name="fc")(inputs)
    return keras.Model(inputs, L.Dense(10, name="out")(h))


def _served(saved_model_dir, x):
    """The outputs of the exported SavedModel's serving signature on ``x`` (plain TF)."""
    import tensorflow as tf
    serve = tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
    (name,) = serve.structured_input_signature[1]
    (out,) = serve(**{name: tf.constant(x)}).values()
    return out.numpy()


def _export_with_tensorflow(args):
    """``tools/export.py ARGS`` in a process on Keras 3's TensorFlow backend (the fix the
    other backends' messages give); returns the finished process."""
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


def test_export_run_of_an_imp_level_and_control(tmp_path):
    """A Keras 3 IMP run folder (model.json and Keras 3 weight files) gives back level 1's
    reinit control with its test accuracy and the ticket's masks; ``export_run`` exports it
    through Keras 3's model.export with the run's provenance, and the SavedModel computes
    what the masked model computes. PyTorch: a one-line error with the fix, and the fix
    (the TensorFlow backend, in another process) exports the PyTorch-trained run."""
    from tf_lottery.export.run_folder import (RunExportError, architecture_keras, export_run,
                                              load_run_model)
    from tf_lottery.lottery import IterativeMagnitudePruning, results

    train, test = _digits()
    folder = tmp_path / "run"
    rows = IterativeMagnitudePruning(
        _mlp, train, test, lambda: keras.optimizers.SGD(0.05), output_dir=str(folder),
        epochs=1, batch_size=40, levels=2, controls=("reinit", "random_mask"),
        verbose=0).run()
    assert architecture_keras((folder / "model.json").read_text()) == 3
    model, provenance = load_run_model(str(folder), level=1, kind="reinit")
    assert isinstance(model, keras.Model)
    row = next(r for r in rows if (r["level"], r["kind"]) == (1, "reinit"))
    assert provenance["method"] == "imp_reinit" and provenance["kind"] == "reinit"
    assert provenance["remaining"] == row["remaining"] and provenance["level"] == 1
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    scores = model.evaluate(*test, batch_size=60, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-6)
    masks = results.read_arrays(str(folder / "level_1" / "masks.npz"))  # the ticket's masks
    assert sorted(tfl.get_masks(model)) == sorted(masks)
    for key, weight in tfl.get_weights(model).items():
        np.testing.assert_array_equal(tfl.get_masks(model)[key], masks[key])
        assert not np.any(weight[masks[key] == 0])
    ticket, _ = load_run_model(str(folder))  # default: the last level's main line
    assert not np.array_equal(tfl.get_weights(ticket)["fc/kernel"],
                              tfl.get_weights(model)["fc/kernel"])
    x = test[0][:8]
    expected = keras.ops.convert_to_numpy(model(x))
    target = folder / "export" / "level_1_reinit"
    if BACKEND == "torch":  # no SavedModel from PyTorch: the error names the fix ...
        with pytest.raises(RunExportError) as error:
            export_run(str(folder), level=1, kind="reinit", tflite=False, verbose=False)
        message = str(error.value)
        assert "\n" not in message and "KERAS_BACKEND=tensorflow tf-lottery export" in message
        assert not (folder / "export").exists()
        done = _export_with_tensorflow([f"--run_dir={folder}", "--level=1", "--kind=reinit",
                                        "--notflite", "--noverify"])  # ... and the fix works
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads((target / "export_report.json").read_text())
        assert report["keras"]["backend"] == "tensorflow"
    else:
        report = export_run(str(folder), level=1, kind="reinit", tflite=False,
                            verbose=False)
        assert report["keras"]["backend"] == BACKEND
        check = report["verification"]  # also checked in a fresh process without tf_lottery
        assert check["max_abs_diff"] <= 1e-5 and check["masked_weights_checked"] == 2
        assert check["nonzeros"] == check["nonzeros_expected"]
    assert report["prunable"]["active"] == sum(int(m.sum()) for m in masks.values())
    np.testing.assert_allclose(_served(target / "saved_model", x), expected, atol=1e-5)
    saved = json.loads((target / "sparsity.json").read_text())["provenance"]
    assert (saved["method"], saved["level"], saved["kind"]) == ("imp_reinit", 1, "reinit")
    assert saved["remaining"] == row["remaining"] and saved["run_dir"] == str(folder)


def test_export_cli_on_a_sparse_training_run(tmp_path, capsys):
    """``tf-lottery train --keras=3`` (RigL, 4 steps) then ``tf-lottery export --run_dir``:
    model.h5 holds Keras 3's .keras format; the export's SavedModel computes what the run's
    masked model computes, with its provenance. The same train command with ``--export``
    on the finished run exports it too. A backend without SavedModel export (PyTorch) is a
    one-line error naming the fix, which exports the run from another process."""
    import gin

    from tf_lottery import cli
    from tf_lottery.export.run_folder import load_run_model
    from tf_lottery.keras3.files import is_keras3_archive
    from tf_lottery.training import train as training

    run = tmp_path / "rigl"
    argv = ["tf-lottery train",
            f"--gin_file={os.path.join(ROOT, 'gin_configs', 'digits_lenet300100_rigl.gin')}",
            "--gin_param=train.max_steps = 4", f"--output_dir={run}", "--keras=3",
            f"--backend={BACKEND}"]
    try:
        with pytest.raises(SystemExit) as done:
            cli.run("train", argv)
        assert done.value.code in (0, None)
        metrics = json.loads((run / "metrics.json").read_text())
        assert is_keras3_archive(str(run / "model.h5"))
        model, provenance = load_run_model(str(run))
        assert isinstance(model, keras.Model)
        assert training.checksums(model) == metrics["checksums"]  # the trained weights
        assert provenance["method"] == "RigL" and provenance["level"] == metrics["sparsity"]
        x = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype("float32")
        expected = keras.ops.convert_to_numpy(model(x))
        capsys.readouterr()
        out = tmp_path / "exported"
        export_argv = ["tf-lottery export", f"--run_dir={run}", f"--output_dir={out}",
                       "--notflite"]
        with pytest.raises(SystemExit) as done:
            cli.run("export", export_argv)
        if BACKEND == "torch":
            assert done.value.code == 2 and not out.exists()
            err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(
                "tf-lottery export:")]
            assert len(err) == 1 and "KERAS_BACKEND=tensorflow tf-lottery export" in err[0]
            finished = _export_with_tensorflow(export_argv[1:])
            assert finished.returncode == 0, finished.stderr[-3000:]
        else:
            assert done.value.code in (0, None)
            assert "SavedModel check (fresh process, no tf_lottery)" in capsys.readouterr().out
        np.testing.assert_allclose(_served(out / "saved_model", x), expected, atol=1e-5)
        sparsity = json.loads((out / "sparsity.json").read_text())
        assert sparsity["provenance"]["method"] == "RigL"
        assert sparsity["provenance"]["run_dir"] == str(run)
        assert sparsity["sparsity"] == pytest.approx(metrics["sparsity"], abs=1e-6)
        if BACKEND != "torch":  # the finished run again, now with --export
            gin.clear_config()
            cli.forget_train_flags()
            with pytest.raises(SystemExit) as done:
                cli.run("train", argv + ["--export"])
            assert done.value.code in (0, None)
            np.testing.assert_allclose(_served(run / "export" / "saved_model", x), expected,
                                       atol=1e-5)
    finally:
        gin.clear_config()
        cli.forget_train_flags()
