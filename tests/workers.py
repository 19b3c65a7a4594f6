"""Test helper (not a test): run a local MultiWorkerMirroredStrategy cluster of processes."""
import json
import os
import socket
import subprocess

import pytest


def free_ports(n: int, host: str = "localhost"):
    """``n`` distinct free ports on ``host`` (all bound at once, then released)."""
    sockets = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((host, 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def worker_env(cluster, index: int) -> dict:
    """The environment of worker ``index`` of ``cluster``: its TF_CONFIG, CPU only, quiet."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                TF_CONFIG=json.dumps({"cluster": cluster,
                                      "task": {"type": "worker", "index": index}}))


def run_workers(command, n: int, timeout: float) -> list:
    """Runs ``command(index)`` (an argv) as worker ``index`` of an ``n``-worker localhost
    cluster; returns their logs (stdout and stderr); fails the test if one does not finish
    in ``timeout`` seconds or exits non-zero. Workers still running are killed."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(n)]}
    procs = [subprocess.Popen(command(index), env=worker_env(cluster, index),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for index in range(n)]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("MultiWorkerMirroredStrategy workers did not finish in time")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    return logs
