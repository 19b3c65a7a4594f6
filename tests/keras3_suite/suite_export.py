"""``tfl.export`` of Keras 3 models (Keras 3's own ``model.export``), run once per backend by
tests/test_keras3.py. The SavedModel is checked in a fresh process without tf_lottery."""
import json
import os
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
