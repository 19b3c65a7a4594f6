"""Two local workers of ``tools/train.py --strategy=multi_worker`` train one model.

The README's TF_CONFIG recipe on 127.0.0.1: both workers run the digits RigL config
for 4 steps (RigL updates at steps 1-3), exit 0 and report identical weights and masks
(checksums printed by the binary); only the chief (worker 0) writes into output_dir.
"""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from workers import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 240  # seconds for both workers together; they are killed after it


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("tf-lottery result: ")]
    assert lines, f"no result line in:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len("tf-lottery result: "):])


def test_two_workers_train_the_same_model(tmp_path):
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2, "127.0.0.1")]}
    output_dir = tmp_path / "run"
    start = time.time()
    procs, logs = [], []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        cmd = [sys.executable, str(ROOT / "tools" / "train.py"), "--strategy=multi_worker",
               f"--gin_file={ROOT / 'gin_configs' / 'digits_lenet300100_rigl.gin'}",
               "--gin_param=train.max_steps = 4",
               "--gin_param=sparse_training.sparsity = 0.5",
               "--gin_param=RigL.delta_t = 1",
               f"--output_dir={output_dir}"]
        out = open(tmp_path / f"worker{index}.out", "w+")
        err = open(tmp_path / f"worker{index}.err", "w+")
        logs.append((out, err))
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=err, cwd=tmp_path))
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, TIMEOUT - (time.time() - start)))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = []
    for out, err in logs:
        out.seek(0)
        err.seek(0)
        texts.append((out.read(), err.read()))
        out.close()
        err.close()
    for index, (proc, (stdout, stderr)) in enumerate(zip(procs, texts)):
        assert proc.returncode == 0, (f"worker {index} exited {proc.returncode} after "
                                      f"{time.time() - start:.0f} s:\n{stderr[-4000:]}")
    chief, worker = (_result(stdout) for stdout, _ in texts)
    assert chief["checksums"]["masks"] == worker["checksums"]["masks"]
    assert chief["checksums"]["weights"] == worker["checksums"]["weights"]
    assert chief["test_accuracy"] == worker["test_accuracy"]
    assert abs(chief["sparsity"] - 0.5) < 0.01

    # Only the chief wrote into output_dir; the worker's private copy is gone.
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["checksums"] == chief["checksums"]
    assert (output_dir / "operative_config.gin").is_file()
    assert not [p for p in output_dir.rglob("*") if "workertemp" in p.name]
    leftovers = [p for p in pathlib.Path(tempfile.gettempdir()).glob("tf_lottery_worker1_*")
                 if p.stat().st_mtime >= start]
    assert not leftovers
