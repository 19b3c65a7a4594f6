"""Where an IMP run keeps its results: level folders, summaries, atomic writes, resume.

Layout of ``output_dir``::

    .tf_lottery_run         marker: tf-lottery wrote this folder (``--overwrite`` needs it)
    run.json                the run's configuration (a second run must match it)
    config.gin              the gin bindings in force, when gin configured the run
    model.json              the masked model's architecture (``model.to_json()``)
    rewind_point.npz        theta_k, the weights every ticket level is rewound to
    level_<i>/masks.npz     the masks of level i, keyed "layer/weight"
    level_<i>/weights.h5    the trained weights of the main line (model.save_weights)
    level_<i>/weights_<control>.h5  the trained weights of each control at level i
    level_<i>/metrics.json  one entry per kind trained at this level
    summary.json, summary.csv, accuracy_vs_remaining.png, tensorboard/

With ``trials`` > 1 the folder holds one such run folder per trial, ``trial_<i>/``, and
the summary over trials (``tf_lottery.lottery.trials``).

``output_dir`` may be local or on any ``tf.io.gfile`` filesystem (``gs://...``). Every
file is written to a temporary name in its folder and renamed into place, so a
run killed at any moment leaves either the old file or the new one, never half of one.
A level counts as finished when its ``metrics.json`` exists (it is written last).
"""
import csv
import hashlib
import io
import json
import logging
import os
import warnings
from typing import Dict, List, Mapping, Optional

import gin
import numpy as np

from tf_lottery._io import (atomic_write, gfile, is_local, local_copy, move_aside, read_bytes,
                            write_text)

log = logging.getLogger("tf_lottery")

SUMMARY_KEYS = ("level", "kind", "remaining", "test_accuracy", "early_stop_iteration",
                "early_stop_test_accuracy", "early_stop_val_loss", "best_val_accuracy",
                "iterations", "fit_seconds", "wall_seconds")


def write_json(path: str, data) -> None:
    """Writes ``data`` as indented JSON, atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def read_json(path: str):
    return json.loads(read_bytes(path).decode("utf-8"))


def write_arrays(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes named arrays to an ``.npz`` atomically."""
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(path, write)


def digest(arrays, max_bytes: Optional[int] = None) -> str:
    """Short sha256 of arrays' shapes, dtypes and bytes (the first ``max_bytes`` of each)."""
    hasher = hashlib.sha256()
    for value in arrays:
        value = np.ascontiguousarray(np.asarray(value))
        hasher.update(str((value.shape, value.dtype)).encode())
        hasher.update(value.tobytes()[:max_bytes])
    return hasher.hexdigest()[:16]


def read_arrays(path: str) -> Dict[str, np.ndarray]:
    with np.load(io.BytesIO(read_bytes(path))) as data:
        return {k: data[k] for k in data.files}


def save_weights(model, path: str) -> None:
    """``model.save_weights`` to an .h5 file, atomically (a Keras 3 model writes Keras 3's
    ``.weights.h5`` format under the same name)."""
    from tf_lottery.dispatch import is_keras3, live

    if is_keras3(live(model)):
        from tf_lottery.keras3.files import save_weights as save_keras3
        atomic_write(path, lambda tmp: save_keras3(model, tmp))
    else:
        atomic_write(path, model.save_weights)


def load_weights(model, path: str) -> None:
    """Loads weights written by ``save_weights`` (local or remote ``path``) into ``model``."""
    from tf_lottery.dispatch import is_keras3

    if is_keras3(model):
        from tf_lottery.keras3.files import load_weights as load_keras3
        load_keras3(model, path)
        return
    with local_copy(path) as local:
        model.load_weights(local)


def save_model(model, path: str) -> None:
    """``model.save`` to an .h5 file, atomically (h5 on purpose: one file, loads with
    ``tfl.custom_object_scope``; tf_keras' notice that h5 is legacy is not shown). A Keras 3
    model is written in the ``.keras`` format (``tf_lottery.keras3.files.load_model``)."""
    from tf_lottery.dispatch import is_keras3

    if is_keras3(model):  # Keras 3's .keras format (zip) under the same name
        from tf_lottery.keras3.files import save_model as save_keras3
        atomic_write(path, lambda tmp: save_keras3(model, tmp))
        return

    def save(tmp):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*HDF5 file via `model.save\(\)`")
            model.save(tmp, save_format="h5")
    atomic_write(path, save)


def write_csv(path: str, rows: List[Mapping], keys=SUMMARY_KEYS) -> None:
    """Writes rows as CSV with ``keys`` first and any other keys after, atomically."""
    extra = sorted({k for row in rows for k in row} - set(keys))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(keys) + extra, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in list(keys) + extra})
    write_text(path, buf.getvalue())


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the message says why and what to do)."""


MARKER = ".tf_lottery_run"
_MARKER_TEXT = ("This folder is a run folder written by tf-lottery. `--overwrite` replaces a "
                "folder only when it holds this file (the old run is moved aside, not deleted).\n")
# What a start writes before any result: a run holding only these can take a new config.
_IDENTITY = {MARKER, "run.json", "config.gin", "model.json", "tensorboard"}


_WRITTEN = _IDENTITY | {"operative_config.gin", "rewind_point.npz", "summary.json",
                        "summary.csv", "accuracy_vs_remaining.png", "export", "backup",
                        "model.h5", "metrics.json", "layer_sparsity.png",
                        "instability.json", "instability.png",
                        "cells", "sweep.json", "sweep.csv", "sweep_cells.csv",
                        "accuracy_vs_sparsity.png"}


def _not_ours(entries) -> List[str]:
    """The entries of a run folder that tf-lottery does not write."""
    return sorted(e for e in entries if e not in _WRITTEN and not e.startswith(
        ("level_", ".tmp-", "k_", "trial_", "mode_")))


def level_finished(path: str, level: int) -> bool:
    """Whether level ``level`` of the IMP run folder ``path`` is finished (its
    ``metrics.json``, written last, exists)."""
    return gfile.exists(os.path.join(path, f"level_{level}", "metrics.json"))


def finished_levels(path: str, levels: int) -> int:
    """How many levels of the run folder ``path``, from level 0 on, are finished: the
    level a resumed run starts at."""
    done = 0
    while done < levels and level_finished(path, done):
        done += 1
    return done


def is_run_folder(path: str) -> bool:
    """Whether ``path`` is a folder tf-lottery wrote (it holds our marker file)."""
    return gfile.exists(os.path.join(path, MARKER))


def _is_cwd_or_above(path: str) -> bool:
    here = os.path.realpath(os.getcwd())
    there = os.path.realpath(path)
    return here == there or here.startswith(there.rstrip(os.sep) + os.sep)


class RunDirectory:
    """The output folder of one run: marker, config check, level paths, resume state.

    A new (or empty) folder gets the marker file ``.tf_lottery_run``, ``run.json`` and
    ``config.gin``. The same configuration again resumes it and writes nothing here (a
    finished run is read-only to a repeat of its command). A different configuration is
    refused unless the folder holds no results yet (a start that failed), or unless
    ``overwrite``: then the old run is moved aside to ``path.old-<time>`` and a new one
    starts. A folder holding anything tf-lottery did not write is always refused, and so
    is overwriting the current directory: no file we did not write is ever touched.

    Args:
      path: the output folder (created if missing).
      config: JSON-able description of everything that determines the results.
      overwrite: move a different run found in ``path`` aside and start again.
    """

    def __init__(self, path: str, config: Mapping, overwrite: bool = False):
        self.path = path
        self.config = json.loads(json.dumps(dict(config), default=_jsonable))
        run_file = os.path.join(path, "run.json")
        entries = ([e.rstrip("/") for e in gfile.listdir(path)] if gfile.isdir(path)
                   else [])
        if gfile.exists(path) and not gfile.isdir(path):
            raise RunFolderError(f"{path} is a file, not a folder; choose a new output_dir")
        previous = read_json(run_file) if gfile.exists(run_file) else None
        if previous == self.config and not is_run_folder(path):
            # this very run, started by a tf-lottery without markers: resume it
            write_text(os.path.join(path, MARKER), _MARKER_TEXT)
        if entries and not is_run_folder(path):
            shown = ", ".join(repr(e) for e in sorted(entries)[:3])
            raise RunFolderError(
                f"{path} is not a tf-lottery run folder (it holds {shown}"
                f"{', ...' if len(entries) > 3 else ''}); choose a new or empty output_dir "
                "(--overwrite only replaces a folder tf-lottery wrote)")
        if previous == self.config:
            return  # the same run: resume, write nothing
        if previous is not None and set(entries) - _IDENTITY:
            changed = sorted(k for k in set(previous) | set(self.config)
                             if previous.get(k) != self.config.get(k))
            if not overwrite:
                raise RunFolderError(
                    f"{path} holds a different run (settings that differ: {changed}); "
                    "choose another output_dir, or pass overwrite=True (--overwrite) to move "
                    f"it aside to {os.path.normpath(path)}.old-<time> and start again")
            foreign = _not_ours(entries)
            if foreign:
                raise RunFolderError(
                    f"{path} holds files tf-lottery did not write ({', '.join(foreign[:3])}); "
                    "move them out of the run folder first, or choose another output_dir")
            if not is_local(path):
                raise RunFolderError(
                    f"{path} cannot be moved aside (object stores have no folder rename); "
                    "choose another output_dir")
            if _is_cwd_or_above(path):
                raise RunFolderError(
                    f"{path} is the current directory (or holds it): it cannot be moved "
                    "aside; choose another output_dir")
            moved = move_aside(path)
            log.warning("moved the previous run in %s aside to %s", path, moved)
        gfile.makedirs(path)
        if not is_run_folder(path):
            write_text(os.path.join(path, MARKER), _MARKER_TEXT)
        write_json(run_file, self.config)
        config_gin = os.path.join(path, "config.gin")
        if gin.config_str().strip():
            write_text(config_gin, gin.config_str())
        elif gfile.exists(config_gin):  # ours, from the failed start this run replaces
            gfile.remove(config_gin)
        if previous is not None and gfile.exists(os.path.join(path, "model.json")):
            gfile.remove(os.path.join(path, "model.json"))  # ours: the new run writes its own

    def write_architecture(self, model) -> None:
        """``model.json``: the masked model's architecture (``model.to_json()``), for
        ``tf-lottery export``; written once."""
        path = self.file("model.json")
        if gfile.exists(path):
            return
        try:
            text = model.to_json()
        except (NotImplementedError, TypeError, ValueError) as error:  # e.g. a Lambda layer
            log.warning("the model cannot be saved as JSON (%s): tf-lottery export will need "
                        "the model code", error)
            return
        write_text(path, text)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def level(self, level: int, name: Optional[str] = None) -> str:
        folder = os.path.join(self.path, f"level_{level}")
        return folder if name is None else os.path.join(folder, name)

    def finished(self, level: int) -> bool:
        return level_finished(self.path, level)

    def rows(self, levels: int) -> List[dict]:
        """Summary rows of the finished levels below ``levels``, in order."""
        rows = []
        for level in range(levels):
            if self.finished(level):
                rows += read_json(self.level(level, "metrics.json"))["kinds"]
        return rows

    def write_summary(self, rows: List[Mapping], wall_seconds: Optional[float] = None) -> None:
        """``summary.json`` (config, how it validated, rows, total wall time, the machine
        and TensorFlow build that ran it) and ``summary.csv`` (the rows)."""
        summary = {"config": self.config}
        if "validation_note" in self.config:
            summary["validation"] = {"data": self.config["validation_note"],
                                     "eval_every": self.config.get("eval_every")}
        summary["rows"] = list(rows)
        summary["wall_seconds"] = wall_seconds
        summary["environment"] = environment()
        write_json(self.file("summary.json"), summary)
        write_csv(self.file("summary.csv"), list(rows))


def environment() -> dict:
    """The software and machine a run ran on (results are bit-reproducible only on the
    same machine type and TensorFlow build)."""
    import platform

    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    return {"tensorflow": tf.__version__, "python": platform.python_version(),
            "numpy": np.__version__, "machine": platform.machine(),
            "processor": _cpu_name() or platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "system": platform.system(),
            "cuda": build.get("cuda_version"),
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def _cpu_name() -> Optional[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
