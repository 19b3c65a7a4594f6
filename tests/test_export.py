"""tfl.export: plain SavedModels that stay sparse, TFLite encodings, reports, tools/export.py.

All exports are made once per module (``exports``) and all SavedModels are checked in
ONE fresh Python process that imports only numpy and tensorflow (a TF import costs
several seconds), so the file stays well under a minute on 2 cores.
"""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.export import ExportReport, VerificationError, export
from tf_lottery.export import report as export_report
from tf_lottery.export import saved_model as export_saved_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The independent check: imports numpy and tensorflow only, never tf_lottery.
CHILD = r"""
import json, sys
import numpy as np
import tensorflow as tf
assert "tf_lottery" not in sys.modules
jobs = json.load(open(sys.argv[1]))
result = {}
for name, job in jobs.items():
    loaded = tf.saved_model.load(job["saved_model"])
    fn = loaded.signatures["serving_default"]
    data = np.load(job["inputs"])
    out = fn(**{k: tf.constant(data[k]) for k in data.files})
    result[name] = {
        "outputs": {k: v.numpy().tolist() for k, v in out.items()},
        # in the order of the model's variables (names may repeat: a model loaded from
        # .keras has variables named just "kernel:0")
        "nonzeros": [int(np.count_nonzero(v.numpy())) for v in loaded.variables],
    }
assert "tf_lottery" not in sys.modules
result["__modules__"] = sorted(m for m in sys.modules if m.startswith("tf_lottery"))
json.dump(result, open(sys.argv[2], "w"))
"""


def mlp_model():
    tf.random.set_seed(1)
    inputs = keras.Input((16,), name="features")
    x = keras.layers.Dense(64, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(32, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x), name="mlp")


def conv_model():
    tf.random.set_seed(2)
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv3x3")(inputs)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="conv1x1")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="convnet")


def cumprod_model():
    """tf.math.cumprod has no TFLite builtin (it needs the Select TF ops / flex runtime)."""
    tf.random.set_seed(3)
    inputs = keras.Input((8,), name="x")
    x = keras.layers.Dense(8, name="fc")(inputs)
    x = keras.layers.Lambda(lambda t: tf.math.cumprod(t, axis=-1), name="cumprod")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x), name="cumprod_net")


def batch(shape, seed):
    return np.random.default_rng(seed).normal(size=(6,) + shape).astype("float32")


def _load_tool():
    spec = importlib.util.spec_from_file_location("tools_export",
                                                  os.path.join(REPO, "tools", "export.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """name -> dict(model, sample, report, path, warnings).

    "mlp" and "conv" are verified by export itself (one fresh process each); "conv" goes
    through tools/export.py's main on a saved .keras checkpoint.
    """
    root = tmp_path_factory.mktemp("exports")
    made = {}

    def run(name, model, sample, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = export(model, root / name, sample=sample, verbose=False, latency_runs=5,
                            **kw)
        made[name] = {"model": model, "sample": sample, "report": report, "path": root / name,
                      "warnings": [str(w.message) for w in caught]}

    run("mlp", tfl.sparsify(mlp_model(), 0.8, distribution="uniform", seed=0),
        batch((16,), 0), provenance={"method": "random", "level": 0.8, "gin_config": "a = 1"})
    run("plain", mlp_model(), batch((16,), 2), verify=False)
    run("cumprod", tfl.sparsify(cumprod_model(), 0.5, seed=0), batch((8,), 3), verify=False)

    # "conv": tools/export.py main, in-process, on a checkpoint of a masked model
    model = tfl.sparsify(conv_model(), 0.8, seed=0)
    checkpoint = root / "model.keras"
    model.save(checkpoint)
    gin_file = root / "run.gin"
    gin_file.write_text("train.steps = 10\n")
    tool = _load_tool()
    out = root / "conv"
    argv = ["export.py", f"--checkpoint={checkpoint}", f"--output_dir={out}", "--method=rigl",
            "--sparsity=0.8", f"--gin_file={gin_file}", "--latency_runs=5"]
    tool.FLAGS(argv)
    try:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            tool.main(["export.py"])
        with pytest.raises(FileExistsError):  # a second run without --overwrite
            tool.main(["export.py"])
    finally:
        tool.FLAGS.unparse_flags()
    report = json.loads((out / "export_report.json").read_text())
    made["conv"] = {"model": model, "sample": batch((12, 12, 3), 1),
                    "report": ExportReport(report), "path": out, "stdout": stdout.getvalue()}
    return made


@pytest.fixture(scope="module")
def clean_check(exports, tmp_path_factory):
    """Loads every exported SavedModel in one process that never imports tf_lottery."""
    work = tmp_path_factory.mktemp("clean_check")
    jobs = {}
    for name, made in exports.items():
        inputs = work / f"{name}.npz"
        np.savez(inputs, **{made["report"]["signature"]["inputs"][0]: made["sample"]})
        jobs[name] = {"saved_model": str(made["path"] / "saved_model"), "inputs": str(inputs)}
    (work / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(work / "jobs.json"),
                           str(work / "out.json")], cwd=str(work), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text())


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_saved_model_matches_masked_model_without_tf_lottery(exports, clean_check, name):
    made = exports[name]
    assert clean_check["__modules__"] == []
    child = clean_check[name]
    (out_name,) = made["report"]["signature"]["outputs"]
    got = np.asarray(child["outputs"][out_name], dtype=np.float32)
    want = made["model"](made["sample"], training=False).numpy()
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5

    # Exactly the non-zeros the masks allow, variable by variable (same order).
    plain_variables = tfl.strip(made["model"]).variables
    assert len(child["nonzeros"]) == len(plain_variables)
    masks = {id(w): m.numpy() for layer in tfl.masked_layers(made["model"])
             for w, m in layer.masked_weights}
    masked_units = 0
    for count, var in zip(child["nonzeros"], plain_variables):
        assert count == int(np.count_nonzero(var.numpy()))
        if id(var) in masks:
            assert count == int(np.count_nonzero(var.numpy() * masks[id(var)]))
            assert count <= int(masks[id(var)].sum())
            masked_units += 1
    assert masked_units == len(tfl.get_masks(made["model"])) == 3
    total = sum(child["nonzeros"])
    # and export's own check (in its own fresh process) agreed
    verification = made["report"]["verification"]
    assert verification["tf_lottery_imported"] is False
    assert verification["max_abs_diff"] <= 1e-5
    assert verification["nonzeros"] == total
    assert verification["masked_weights_checked"] == masked_units


def test_export_writes_all_files_and_reports(exports):
    made = exports["conv"]
    path = made["path"]
    assert sorted(os.listdir(path)) == ["export_report.json", "model_dense.tflite",
                                        "model_sparse.tflite", "saved_model", "sparsity.json"]
    assert not [p for p in os.listdir(path.parent) if ".tmp-" in p or ".old-" in p]
    on_disk = json.loads((path / "export_report.json").read_text())
    assert on_disk == json.loads(json.dumps(dict(made["report"])))
    report = made["report"]
    for key in ("saved_model", "model_dense.tflite", "model_sparse.tflite"):
        assert report["files"][key]["bytes"] > 0 and report["files"][key]["gzip_bytes"] > 0
    assert report["latency"]["median_ms"]["dense"] > 0
    assert report["latency"]["median_ms"]["sparse"] > 0
    assert report["latency"]["output_max_abs_diff"]["sparse"] <= 1e-4
    assert max(report["latency"]["reference_max_abs_diff"].values()) <= 1e-4
    assert report["tflite"]["error"] is None
    assert report["speed_note"]
    table = report.table()
    assert "TFLite latency" in table and "FLOPs/example" in table

    # FLOPs by hand: conv3x3 10x10x(3*3*3*8), conv1x1 10x10x(8*16), logits 16*4
    flops = report["flops"]
    assert flops["dense"] == 100 * 216 + 100 * 128 + 64
    by_layer = {r["layer"]: r for r in flops["layers"]}
    for layer in tfl.masked_layers(made["model"]):
        kernel = layer.layer.kernel.numpy()
        row = by_layer[layer.layer.name]
        assert row["density"] == pytest.approx(np.count_nonzero(kernel) / kernel.size)
    assert flops["sparse"] == sum(r["sparse"] for r in flops["layers"]) < flops["dense"]
    assert flops["not_counted"] == []


def test_sparse_tflite_is_smaller_for_sparse_mlp(exports):
    report = exports["mlp"]["report"]
    assert report["size_ratio"]["tflite"] > 2.0
    assert report["tflite"]["sparse_encoding"]["consumers"].get("FULLY_CONNECTED", 0) >= 2


def test_sparsity_json(exports):
    made = exports["mlp"]
    data = json.loads((made["path"] / "sparsity.json").read_text())
    assert data["masked"] is True
    assert data["provenance"]["method"] == "random"
    assert data["provenance"]["level"] == 0.8
    assert data["provenance"]["gin_config"] == "a = 1"
    rows = tfl.sparsity_report(made["model"])
    assert [(r["layer"], r["weight"]) for r in data["layers"]] == [
        (r["layer"], r["weight"]) for r in rows[:-1]]
    for got, want in zip(data["layers"], rows[:-1]):
        assert got["nonzeros"] == want["nonzeros"] and got["params"] == want["params"]
        assert got["sparsity"] == pytest.approx(want["sparsity"])
    assert data["total"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert data["provenance"]["measured_sparsity"] == pytest.approx(data["total"]["sparsity"])


def test_model_without_masks_warns_and_exports_dense(exports, clean_check):
    made = exports["plain"]
    assert any("no masks" in w for w in made["warnings"])
    data = json.loads((made["path"] / "sparsity.json").read_text())
    assert data["masked"] is False and data["total"]["sparsity"] == pytest.approx(0.0)
    assert made["report"]["verification"] is None  # exported with verify=False
    (out_name,) = made["report"]["signature"]["outputs"]
    got = np.asarray(clean_check["plain"]["outputs"][out_name], dtype=np.float32)
    want = made["model"](made["sample"]).numpy()
    assert np.max(np.abs(got - want)) <= 1e-5


def test_unconvertible_layer_keeps_saved_model_and_reports_tflite_error(exports, clean_check):
    made = exports["cumprod"]
    assert sorted(os.listdir(made["path"])) == ["export_report.json", "saved_model",
                                                "sparsity.json"]
    error = made["report"]["tflite"]["error"]
    assert error and "Cumprod" in error
    assert json.loads((made["path"] / "export_report.json").read_text())["tflite"]["error"] \
        == error
    assert any("TFLite conversion failed" in w for w in made["warnings"])
    assert "TFLite conversion failed" in made["report"].table()
    (out_name,) = made["report"]["signature"]["outputs"]
    got = np.asarray(clean_check["cumprod"]["outputs"][out_name], dtype=np.float32)
    want = made["model"](made["sample"]).numpy()
    assert np.max(np.abs(got - want)) <= 1e-5


def test_existing_path_refused_unless_overwrite(tmp_path):
    model = tfl.sparsify(mlp_model(), 0.5, seed=0)
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError):
        export(model, target, verbose=False)
    assert os.listdir(target) == ["keep.txt"]
    file_target = tmp_path / "file"
    file_target.write_text("x")
    with pytest.raises(FileExistsError):
        export(model, file_target, verbose=False)

    with pytest.warns(UserWarning, match="moved it aside"):
        report = export(model, target, overwrite=True, tflite=False, verify=False,
                        verbose=False)
    assert sorted(os.listdir(target)) == ["export_report.json", "saved_model", "sparsity.json"]
    assert report["tflite"]["enabled"] is False and report["latency"] is None
    names = sorted(os.listdir(tmp_path))  # no temporary folders left; the user's file kept
    assert names[:2] == ["file", "out"] and len(names) == 3, names
    assert (tmp_path / names[2] / "keep.txt").read_text() == "old"
    assert names[2].startswith("out.old-")
    export(model, target, overwrite=True, tflite=False, verify=False, verbose=False)
    assert sorted(os.listdir(tmp_path)) == names  # an export replaces an export
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o777 & ~_umask())


def test_compare_rejects_differences():
    """The parent-side comparison catches output drift, non-zero counts and mask leaks."""
    var = tf.Variable(np.array([[1.0, 0.0], [2.0, 0.0]], np.float32), name="k")
    mask = np.array([[1, 0], [1, 0]], np.float32)
    ref = [np.zeros((2, 3), np.float32)]

    def child(out, value):
        nonzero = value != 0
        return {"outputs": {"y": out},
                "variables": [{"name": "k:0", "shape": [2, 2],
                               "nonzeros": int(nonzero.sum())}],
                "nonzero_masks": [np.packbits(nonzero.ravel())], "tf_lottery_imported": False}

    good = child(ref[0], var.numpy())
    assert export_saved_model.compare(good, ref, ["y"], [var], {0: mask}, 1e-5)["nonzeros"] == 2
    with pytest.raises(VerificationError, match="differ"):
        export_saved_model.compare(child(ref[0] + 1e-3, var.numpy()), ref, ["y"], [var],
                                   {0: mask}, 1e-5)
    leaked = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)  # same count, outside the mask
    with pytest.raises(VerificationError, match="mask is 0"):
        export_saved_model.compare(child(ref[0], leaked), ref, ["y"], [var], {0: mask}, 1e-5)
    with pytest.raises(VerificationError, match="non-zeros in the SavedModel"):
        export_saved_model.compare(child(ref[0], np.ones((2, 2), np.float32)), ref, ["y"],
                                   [var], {0: mask}, 1e-5)


def test_flops_of_depthwise_separable_and_transpose_layers():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(inputs)
    x = keras.layers.SeparableConv2D(6, 3, strides=2, padding="same", name="sep")(x)
    x = keras.layers.Conv2DTranspose(2, 2, strides=2, name="up")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))
    model.get_layer("fc").kernel.assign(np.zeros((128, 3), np.float32))
    flops = export_report.flops(model)
    rows = {(r["layer"], r["weight"]): r["dense"] for r in flops["layers"]}
    assert rows[("dw", "depthwise_kernel")] == 64 * 3 * 3 * 4
    assert rows[("sep", "depthwise_kernel")] == 16 * 3 * 3 * 4
    assert rows[("sep", "pointwise_kernel")] == 16 * 4 * 6
    assert rows[("up", "kernel")] == 16 * 2 * 2 * 2 * 6
    assert rows[("fc", "kernel")] == 128 * 3
    assert flops["sparse"] == flops["dense"] - 128 * 3  # the all-zero fc costs nothing


def test_tools_export_main_on_saved_checkpoint(exports):
    made = exports["conv"]
    assert "TFLite latency" in made["stdout"]
    data = json.loads((made["path"] / "sparsity.json").read_text())
    assert data["provenance"]["method"] == "rigl"
    assert data["provenance"]["level"] == 0.8
    assert data["provenance"]["gin_config"] == "train.steps = 10\n"
    assert data["provenance"]["checkpoint"].endswith("model.keras")
    assert made["report"]["verification"]["masked_weights_checked"] == 3


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
