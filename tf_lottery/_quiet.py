"""Quiet binaries: TensorFlow's known-harmless C++ log lines are dropped from stderr.

TensorFlow's C++ runtime writes through absl logging straight to file descriptor 2, some
of it before ``TF_CPP_MIN_LOG_LEVEL`` is read ("All log messages before
absl::InitializeLog() ..."), and some at error level although nothing is wrong (a CUDA
build on a machine without a GPU, tf.data's ``use_unbounded_threadpool`` attribute,
"Sharding callback duration"). The binaries (``tf-lottery``, ``tools/*.py``) install
``StderrFilter`` before TensorFlow loads: fd 2 becomes a pipe, a thread copies every
line to the real stderr except those matching ``HARMLESS``. Anything else (a real error,
a traceback) passes unchanged. ``--verbosity=1`` (or higher) or ``TF_LOTTERY_TF_LOGS=1``
keeps every line.

This module imports nothing from TensorFlow; ``tf_lottery/_keras.py`` calls
``install_for_binaries()`` first thing.
"""
import atexit
import os
import re
import sys
import threading

HARMLESS = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"port\.cc:\d+\] oneDNN custom operations are on",
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"cuda_(platform|driver|executor)\.cc:\d+\] failed call to cuInit",
    r"NodeDef mentions attribute use_unbounded_threadpool",
    r"Sharding callback duration",
    r"computation_placer\.cc:\d+\] computation placer already registered",
    r"cuda_(fft|dnn|blas)\.cc:\d+\] Unable to register cu",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$",
))

# Python log records of libraries that are known and harmless (absl logging).
HARMLESS_RECORDS = tuple(re.compile(p) for p in (
    r"`TensorInfo\.dtype` is deprecated",   # tensorflow_datasets' mock data
))


class RecordFilter:
    """A ``logging`` filter dropping the records matching ``HARMLESS_RECORDS``."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        return not any(p.search(message) for p in HARMLESS_RECORDS)


BINARIES = ("tf-lottery",)
QUIET_ENV = "TF_LOTTERY_QUIET"      # set by tools/*.py before importing tf_lottery
LOUD_ENV = "TF_LOTTERY_TF_LOGS"     # 1: keep TensorFlow's C++ log lines


def harmless(line: str) -> bool:
    """Whether ``line`` is one of TensorFlow's known-harmless log lines."""
    return any(p.search(line) for p in HARMLESS)


def verbosity_from_argv(argv) -> int:
    """The ``--verbosity=N`` / ``-v N`` value in ``argv`` (absl's flag), else 0."""
    value = 0
    for i, arg in enumerate(argv):
        for prefix in ("--verbosity=", "-v="):
            if arg.startswith(prefix):
                value = arg[len(prefix):]
        if arg in ("--verbosity", "-v") and i + 1 < len(argv):
            value = argv[i + 1]
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


class StderrFilter:
    """Replaces fd 2 by a pipe whose lines reach the real stderr unless ``harmless``."""

    def __init__(self):
        self._real = os.dup(2)
        read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread = threading.Thread(target=self._copy, args=(read,), daemon=True,
                                        name="tf_lottery-stderr-filter")
        self._thread.start()
        atexit.register(self.close)

    def _copy(self, read: int) -> None:
        with os.fdopen(read, "rb", buffering=0) as pipe:
            pending = b""
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = [ln + b"\n" for ln in lines
                        if not harmless(ln.decode("utf-8", "replace"))]
                if kept:
                    os.write(self._real, b"".join(kept))
            if pending and not harmless(pending.decode("utf-8", "replace")):
                os.write(self._real, pending)

    def close(self) -> None:
        """Puts the real stderr back on fd 2 and lets the thread copy what is left."""
        if self._real is None:
            return
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        os.dup2(self._real, 2)  # closes the pipe's last write end held by fd 2
        self._thread.join(timeout=5)
        os.close(self._real)
        self._real = None


_installed = None


def install_for_binaries() -> None:
    """Installs the filter when this process is a tf-lottery binary and quiet logs are
    wanted (see the module doc); otherwise does nothing."""
    global _installed
    if _installed is not None:
        return
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program not in BINARIES and os.environ.get(QUIET_ENV) != "1":
        return
    if os.environ.get(LOUD_ENV) == "1" or verbosity_from_argv(sys.argv[1:]) >= 1:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        _installed = StderrFilter()
    except OSError:  # no fd 2 (a daemon): nothing to filter
        _installed = False
