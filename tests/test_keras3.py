"""The Keras 3 behavioural suite (tests/keras3_suite/) on each backend (TensorFlow, JAX, and
PyTorch where torch is installed), each file in its own process: the backend is fixed per
process, and this process runs tf_keras.

suite_distributed.py runs without conftest.py (it sets up 2 logical TensorFlow CPUs, which
must happen before anything starts TensorFlow) and, on JAX, with 2 host devices."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUITE = ROOT / "tests" / "keras3_suite"
FILES = ("suite_core.py", "suite_export.py", "suite_distributed.py")


CASES = [(suite, backend) for suite in FILES for backend in ("tensorflow", "jax")] + [
    # PyTorch is optional (not a dependency): run where it is installed; no data-parallel
    # test there (see the README's Keras 3 section)
    pytest.param(suite, "torch", marks=pytest.mark.skipif(
        importlib.util.find_spec("torch") is None, reason="torch is not installed"))
    for suite in FILES if suite != "suite_distributed.py"]


@pytest.mark.parametrize("suite,backend", CASES)
def test_keras3_suite(suite, backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    options = []
    if suite == "suite_distributed.py":
        options = ["--noconftest"]
        if backend == "jax":
            env["XLA_FLAGS"] = " ".join([env.get("XLA_FLAGS", ""),
                                         "--xla_force_host_platform_device_count=2"]).strip()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *options, str(SUITE / suite)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout
