"""Condensed / sparse-kernel layers (tf_lottery.export.condensed): equal outputs on Dense,
1x1 Conv+BN, residual and concatenating models, in process and from the exported
SavedModel loaded without tf_lottery; the per-layer report."""
import json
import os

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras
from tf_lottery.export import condensed


def _models():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,))
    dense = keras.Model(inputs, keras.layers.Dense(
        4, name="out")(keras.layers.Dense(24, activation="relu", name="h")(inputs)), name="mlp")
    inputs = keras.Input((5, 5, 6))
    x = keras.layers.Conv2D(16, 1, use_bias=False, name="pw")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    convbn = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="pw2")(x), name="convbn")
    inputs = keras.Input((10,))
    a = keras.layers.Dense(10, activation="relu", name="a")(inputs)
    res = keras.Model(inputs, keras.layers.Add()([inputs, keras.layers.Dense(10, name="b")(a)]),
                      name="residual")
    inputs = keras.Input((9,))
    c = keras.layers.Concatenate()([keras.layers.Dense(7, name="p")(inputs),
                                     keras.layers.Dense(5, name="q")(inputs)])
    cat = keras.Model(inputs, keras.layers.Dense(3, name="head")(c), name="concat")
    return [dense, convbn, res, cat]


@pytest.mark.parametrize("path", condensed.PATHS)
def test_every_path_gives_the_dense_outputs(path):
    for model in _models():
        sparse = tfl.strip(tfl.sparsify(model, 0.7, "uniform", seed=1,
                                        structure="constant_fan_in" if path == "gather"
                                        else "unstructured"))
        x = np.random.default_rng(0).normal(size=(3,) + tuple(model.input_shape[1:]))
        x = x.astype("float32")
        fast, rows = condensed.condense(sparse, force=path)
        kinds = {type(layer).__name__ for layer in fast.layers}
        assert "CondensedDense" in kinds, model.name
        assert all(r["path"] == path for r in rows if r["sparsity"] >= 0.5)
        np.testing.assert_allclose(fast(x), sparse(x), atol=1e-5, err_msg=model.name)


def test_condensed_arrays_pads_short_units():
    kernel = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0]], np.float32)  # [in, out]
    indices, values = condensed.condensed_arrays(kernel)
    np.testing.assert_array_equal(indices, [[0, 2], [2, 0]])
    np.testing.assert_array_equal(values, [[1.0, 2.0], [3.0, 0.0]])


def test_export_condensed_and_compact_verified_without_tf_lottery(tmp_path):
    model = _models()[1]
    sparse = tfl.sparsify(model, 0.8, "uniform", seed=0, structure="constant_fan_in")
    masks = tfl.get_masks(sparse)
    masks["pw/kernel"][..., :3] = 0  # three channels with no inputs: folded, removed
    tfl.set_masks(sparse, masks)
    report = tfl.export(sparse, tmp_path / "out", compact=True, condense="gather",
                        latency_runs=3, verbose=False)
    assert report["verification"]["max_abs_diff"] <= 1e-5
    read = masks["pw2/kernel"].reshape(16, 3).any(axis=1)  # pw channels pw2 reads
    no_outputs = int(np.sum(~read[3:]))
    assert 0 < no_outputs < 13
    assert report["compact"]["layers"] == [{
        "layer": "pw", "before": 16, "after": 13 - no_outputs, "removed": 3 + no_outputs,
        "no_inputs": 3, "no_outputs": no_outputs}]
    with open(os.path.join(tmp_path, "out", "export_report.json")) as f:
        saved = json.load(f)
    assert {r["layer"]: r["path"] for r in saved["condensed"]["layers"]} == {
        "pw": "gather", "pw2": "gather"}
    assert f"pw 16->{13 - no_outputs}" in report.table() and "gather" in report.table()
    # a condensed export (with model_condensed.tflite beside it) is replaced, not moved aside
    (tmp_path / "out" / "model_condensed.tflite").write_bytes(b"tflite")
    tfl.export(sparse, tmp_path / "out", overwrite=True, compact=True, condense="gather",
               latency_runs=3, verbose=False, tflite=False)
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_timed_choice_never_keeps_a_slower_model():
    model = tfl.strip(tfl.sparsify(_models()[0], 0.6, "uniform", seed=0))
    fast, rows = condensed.condense(model, batch_size=2, rounds=5)
    assert [r["layer"] for r in rows] == ["h", "out"]
    for r in rows:
        assert r["path"] in ("dense",) + condensed.PATHS
        assert r["path"] == "dense" or r["speedup"] >= 1.1
    if all(r["path"] == "dense" for r in rows):
        assert fast is model


def test_bad_options_are_one_line_errors():
    model = tfl.strip(tfl.sparsify(_models()[0], 0.6, "uniform", seed=0))
    with pytest.raises(ValueError, match="not a kernel path; pass True"):
        condensed.condense(model, force="csr")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        condensed.condense(model, batch_size=0)
