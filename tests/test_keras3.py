"""The Keras 3 behavioural suite (tests/keras3_suite/) on each backend (TensorFlow, JAX, and
PyTorch where torch is installed), each file in its own process: the backend is fixed per
process, and this process runs tf_keras.

The data-parallel suites (suite_distributed*.py) run without conftest.py (they set up 2
logical TensorFlow CPUs, which must happen before anything starts TensorFlow) and, on JAX,
with 2 host devices."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUITES = sorted(p.name for p in (ROOT / "tests" / "keras3_suite").glob("suite_*.py"))
TORCH_SUITES = ("suite_core.py", "suite_dst.py", "suite_dst_rules.py", "suite_export.py",
                "suite_imp.py")  # not distributed


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               **extra)
    env.pop("TF_USE_LEGACY_KERAS", None)
    return env


CASES = [(suite, backend) for suite in SUITES for backend in ("tensorflow", "jax")] + [
    # PyTorch is optional (not a dependency): run where it is installed; no data-parallel
    # test there (see the README's Keras 3 section)
    pytest.param(suite, "torch", marks=pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="torch is not installed"))
    for suite in TORCH_SUITES]


@pytest.mark.parametrize("suite,backend", CASES)
def test_keras3_suite(suite, backend):
    env = _env(KERAS_BACKEND=backend)
    options = []
    if suite.startswith("suite_distributed"):
        options = ["--noconftest"]
        if backend == "jax":
            env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""),
                                         "--xla_force_host_platform_device_count=2"]).strip()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *options, str(ROOT / "tests" / "keras3_suite" / suite)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout


_SAVE = """
import sys, keras, numpy as np, tf_lottery as tfl
keras.utils.set_random_seed(0)
inputs = keras.Input((16,))
model = keras.Model(inputs, keras.layers.Dense(4, name="d")(
    keras.layers.Dense(32, activation="relu", name="h")(inputs)))
sparse = tfl.sparsify(model, 0.7, "erk", seed=2)
sparse.compile(keras.optimizers.Adam(0.01), "mse")
x = np.random.default_rng(1).normal(size=(32, 16)).astype("float32")
sparse.fit(x, x[:, :4], epochs=1, batch_size=8, verbose=0)
sparse.save(sys.argv[1])
np.savez(sys.argv[2], x=x, y=sparse.predict(x, verbose=0),
         **{k.replace("/", "."): m for k, m in tfl.get_masks(sparse).items()})
"""

_LOAD = """
import sys, keras, numpy as np, tf_lottery as tfl
saved = np.load(sys.argv[2])
loaded = keras.saving.load_model(sys.argv[1])
masks = tfl.get_masks(loaded)
for key, mask in masks.items():
    np.testing.assert_array_equal(mask, saved[key.replace("/", ".")], err_msg=key)
for layer in tfl.masked_layers(loaded):
    for weight, mask in layer.masked_weights:
        assert np.count_nonzero(keras.ops.convert_to_numpy(weight)[
            tfl.keras3.wrapper.mask_array(mask) == 0]) == 0, weight.path
np.testing.assert_allclose(loaded.predict(saved["x"], verbose=0), saved["y"], rtol=1e-5,
                           atol=1e-6)
print("loaded", sorted(masks), keras.backend.standardize_dtype(
    tfl.masked_layers(loaded)[0].masked_weights[0][1].dtype))
"""


@pytest.mark.parametrize("source,target", [("jax", "tensorflow"), ("tensorflow", "jax")])
def test_a_keras_file_moves_between_backends(tmp_path, source, target):
    """A sparse ``.keras`` file saved on one backend (masks bool on JAX, float32 on
    TensorFlow) loads on the other with the same masks, exact zeros and predictions."""
    path, arrays = str(tmp_path / "sparse.keras"), str(tmp_path / "saved.npz")
    for backend, code in ((source, _SAVE), (target, _LOAD)):
        done = subprocess.run([sys.executable, "-c", code, path, arrays],
                              env=_env(KERAS_BACKEND=backend), cwd=ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    expected_dtype = "bool" if target == "jax" else "float32"
    assert done.stdout.split()[-1] == expected_dtype, done.stdout


def test_binary_backend_flag_is_set_before_keras_loads():
    """``tf-lottery ... --backend=jax`` loads Keras 3 on JAX although KERAS_BACKEND is unset
    (the flag is read before TensorFlow, which imports Keras 3, loads)."""
    env = _env()
    env.pop("KERAS_BACKEND", None)
    code = ("import sys; sys.argv = ['tf-lottery', 'train', '--backend=jax']; "
            "import tf_lottery, keras; print('backend', keras.config.backend())")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "backend jax" in done.stdout


def test_keras3_digits_table_is_the_one_its_runs_produced():
    """The README's Keras 3 digits table is what tools/keras3_digits_table.py makes from the
    kept summaries, and the runs show the result: tickets hold the dense accuracy to about 2%
    of the weights on both backends while the reinit control falls away."""
    import importlib.util
    import json
    import re

    spec = importlib.util.spec_from_file_location(
        "keras3_digits_table", ROOT / "tools" / "keras3_digits_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    runs = {}
    for name in tool.LABELS:
        path = ROOT / "docs" / "keras3" / f"digits_imp_{name}.json"
        if path.exists():
            runs[name] = json.loads(path.read_text(encoding="utf-8"))
    assert {"keras3_tensorflow", "keras3_jax"} <= set(runs)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- keras3-digits:begin -->\n(.*?)\n<!-- keras3-digits:end -->",
                        readme, re.S).group(1)
    assert section == tool.table(runs)
    assert not runs["keras3_jax"].get("partial")
    for name in ("keras3_tensorflow", "keras3_jax"):
        if runs[name].get("partial"):  # a run that was still going: its levels so far
            continue
        rows = {(r["level"], r["kind"]): r for r in runs[name]["rows"]}
        last = max(level for level, _ in rows)
        assert rows[(last, "ticket")]["remaining"] < 0.025
        dense = rows[(0, "ticket")]["test_accuracy"]
        assert rows[(last, "ticket")]["test_accuracy"] > dense - 0.015
        assert rows[(last, "reinit")]["test_accuracy"] < rows[(last, "ticket")]["test_accuracy"]
