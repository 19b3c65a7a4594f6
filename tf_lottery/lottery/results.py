"""Where an IMP run keeps its results: level folders, summaries, atomic writes, resume.

Layout of ``output_dir``::

    run.json                the run's configuration (a second run must match it)
    config.gin              the gin bindings in force, when gin configured the run
    rewind_point.npz        theta_k, the weights every ticket level is rewound to
    level_<i>/masks.npz     the masks of level i, keyed "layer/weight"
    level_<i>/weights.h5    the trained weights of the main line (model.save_weights)
    level_<i>/metrics.json  one entry per kind trained at this level
    summary.json, summary.csv, accuracy_vs_remaining.png, tensorboard/

``output_dir`` may be local or on any ``tf.io.gfile`` filesystem (``gs://...``). Every
file is written to a temporary name in its folder and renamed into place, so a
run killed at any moment leaves either the old file or the new one, never half of one.
A level counts as finished when its ``metrics.json`` exists (it is written last).
"""
import csv
import hashlib
import io
import json
import os
from typing import Dict, List, Mapping, Optional

import gin
import numpy as np

from tf_lottery._io import atomic_write, gfile, read_bytes, write_text

SUMMARY_KEYS = ("level", "kind", "remaining", "test_accuracy", "best_val_accuracy",
                "early_stop_iteration", "iterations", "fit_seconds", "wall_seconds")


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
    """``model.save_weights`` to an .h5 file, atomically."""
    atomic_write(path, model.save_weights)


def save_model(model, path: str) -> None:
    """``model.save`` to an .h5 file, atomically."""
    atomic_write(path, model.save)


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


class RunDirectory:
    """The output folder of one IMP run: config check, level paths, resume state.

    Args:
      path: the output folder (created if missing).
      config: JSON-able description of everything that determines the results.
      overwrite: remove whatever the folder holds when its config differs.
    """

    def __init__(self, path: str, config: Mapping, overwrite: bool = False):
        self.path = path
        self.config = json.loads(json.dumps(dict(config), default=_jsonable))
        run_file = os.path.join(path, "run.json")
        if gfile.exists(run_file):
            previous = read_json(run_file)
            if previous != self.config:
                if not overwrite:
                    changed = sorted(k for k in set(previous) | set(self.config)
                                     if previous.get(k) != self.config.get(k))
                    raise ValueError(
                        f"{path} holds a different run (settings that differ: {changed}); "
                        "choose another output_dir, or pass overwrite=True (--overwrite) to "
                        "delete it and start again")
                self._clear()
        elif gfile.isdir(path) and gfile.listdir(path):
            if not overwrite:
                raise ValueError(f"{path} exists and is not an IMP run folder; choose an empty "
                                 "or new output_dir, or pass overwrite=True (--overwrite)")
            self._clear()
        gfile.makedirs(path)
        write_json(run_file, self.config)
        if gin.config_str().strip():
            write_text(os.path.join(path, "config.gin"), gin.config_str())

    def _clear(self):
        for name in gfile.listdir(self.path):
            full = os.path.join(self.path, name.rstrip("/"))
            if gfile.isdir(full) and not os.path.islink(full):
                gfile.rmtree(full)
            else:
                gfile.remove(full)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def level(self, level: int, name: Optional[str] = None) -> str:
        folder = os.path.join(self.path, f"level_{level}")
        return folder if name is None else os.path.join(folder, name)

    def finished(self, level: int) -> bool:
        return gfile.exists(self.level(level, "metrics.json"))

    def rows(self, levels: int) -> List[dict]:
        """Summary rows of the finished levels below ``levels``, in order."""
        rows = []
        for level in range(levels):
            if self.finished(level):
                rows += read_json(self.level(level, "metrics.json"))["kinds"]
        return rows

    def write_summary(self, rows: List[Mapping]) -> None:
        write_json(self.file("summary.json"), {"config": self.config, "rows": list(rows)})
        write_csv(self.file("summary.csv"), list(rows))
