"""The Keras 3 behavioural suite (tests/keras3_suite/) on each backend, each in its own
process: the backend is fixed per process, and this process runs tf_keras."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUITE_DIR = ROOT / "tests" / "keras3_suite"


@pytest.mark.parametrize("suite", ["suite_core.py", "suite_dst.py"])
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_keras3_suite(backend, suite):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(SUITE_DIR / suite)], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout and "failed" not in done.stdout
