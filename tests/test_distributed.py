"""RigL / SET under tf.distribute, in subprocesses (tests/dst_distributed_helper.py).

- MirroredStrategy over 2 logical CPU devices gives the same masks (exactly) and weights
  (to float tolerance) as 1 device with the same global batch, and both replicas hold
  identical masks; through fit and through tfl.SparseOptimizer in a custom loop.
- A 2-process MultiWorkerMirroredStrategy run on localhost completes and its workers end
  with identical masks and weights; the same training through tfl.SparseOptimizer in a
  custom loop gives the workers identical masks, equal to fit's.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from workers import run_workers

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "dst_distributed_helper.py")
TIMEOUT = 150


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    """One helper process for both MirroredStrategy tests (fit and custom loop)."""
    out = str(tmp_path_factory.mktemp("mirrored") / "mirrored.npz")
    proc = subprocess.run([sys.executable, HELPER, "mirrored", out], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return np.load(out)


def test_mirrored_two_devices_match_one_device(mirrored_run):
    data = mirrored_run
    keys = sorted(k.split("/", 3)[3] for k in data.files if k.startswith("rigl/single/mask/"))
    assert keys == ["conv/kernel", "d1/kernel", "d2/kernel"]
    for method in ("rigl", "set"):
        assert int(data[f"{method}/single/updates"]) == 5
        assert int(data[f"{method}/mirrored/updates"]) == 5
        assert int(data[f"{method}/mirrored/traces"]) == 2  # once per replica
        moved = 0
        for key in keys:
            single = data[f"{method}/single/mask/{key}"]
            mirrored = data[f"{method}/mirrored/mask/{key}"]
            np.testing.assert_array_equal(mirrored, single)
            np.testing.assert_array_equal(data[f"{method}/mirrored/replica0/{key}"],
                                          data[f"{method}/mirrored/replica1/{key}"])
            assert single.sum() == data[f"initial/mask/{key}"].sum()
            moved += int((single != data[f"initial/mask/{key}"]).sum())
            np.testing.assert_allclose(data[f"{method}/mirrored/weight/{key}"],
                                       data[f"{method}/single/weight/{key}"],
                                       rtol=1e-4, atol=1e-5)
        assert moved > 0


def test_mirrored_custom_loop_matches_one_device_and_fit(mirrored_run):
    """tfl.SparseOptimizer under strategy.run: replicas agree, and the masks equal the
    one-device loop's and fit's (same data order and seed)."""
    data = mirrored_run
    keys = sorted(k.split("/", 3)[3] for k in data.files if k.startswith("rigl/single/mask/"))
    assert int(data["rigl/loop_mirrored/updates"]) == 2  # traced once per replica
    assert int(data["rigl/loop_mirrored/last_step"]) == 10
    for key in keys:
        mirrored = data[f"rigl/loop_mirrored/mask/{key}"]
        np.testing.assert_array_equal(data[f"rigl/loop_mirrored/replica0/{key}"],
                                      data[f"rigl/loop_mirrored/replica1/{key}"])
        np.testing.assert_array_equal(mirrored, data[f"rigl/loop_single/mask/{key}"])
        np.testing.assert_array_equal(mirrored, data[f"rigl/single/mask/{key}"])
        np.testing.assert_allclose(data[f"rigl/loop_mirrored/weight/{key}"],
                                   data[f"rigl/single/weight/{key}"], rtol=1e-4, atol=1e-5)


def test_multi_worker_mirrored_two_processes_agree(tmp_path):
    outs = [str(tmp_path / f"worker{index}.json") for index in range(2)]
    run_workers(lambda index: [sys.executable, HELPER, "multiworker", outs[index]], 2, TIMEOUT)
    results = []
    for path in outs:
        with open(path) as f:
            results.append(json.load(f))
    assert sorted(r["task"] for r in results) == [0, 1]
    for r in results:
        assert r["replicas"] == 2 and r["updates"] == 5
    first, second = results
    assert first["mask_sha256"] == second["mask_sha256"]
    assert first["active"] == second["active"]
    for key in first["weight_sum"]:
        assert first["weight_sum"][key] == pytest.approx(second["weight_sum"][key], rel=1e-6)
    assert first["mask_sha256"] != first["initial_mask_sha256"]  # the masks did move
    # the custom loop with tfl.SparseOptimizer: the workers agree, and with fit
    assert first["loop_mask_sha256"] == second["loop_mask_sha256"]
    assert first["loop_mask_sha256"] == first["mask_sha256"]
