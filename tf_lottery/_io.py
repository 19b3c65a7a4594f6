"""Atomic file writes: a temporary file in the target's folder, then a rename.

A process killed at any moment leaves either the old file or the new one, never half
of one. Used by run folders, plots and exports. Paths may be local or any filesystem
``tf.io.gfile`` knows (``gs://`` on TPU and multi-worker jobs, ``ram://`` in tests):
a remote file is produced in a local temporary folder (h5py, matplotlib and numpy
write local files), copied beside its target under a temporary name and renamed.
"""
import contextlib
import fnmatch
import os
import tempfile
import uuid
from typing import List, Sequence

from tf_lottery._keras import tf

gfile = tf.io.gfile


def is_local(path: str) -> bool:
    """True for a path of the local filesystem (no ``scheme://`` prefix)."""
    return "://" not in os.fspath(path)


def _put(local: str, path: str) -> None:
    """Copies the local file ``local`` to the remote ``path``: temporary name, then rename."""
    folder, name = path.rsplit("/", 1)
    gfile.makedirs(folder)
    tmp = f"{folder}/.tmp-{uuid.uuid4().hex}-{name}"
    try:
        gfile.copy(local, tmp, overwrite=True)
        gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if gfile.exists(tmp):
            gfile.remove(tmp)
        raise


def _atomic_write_remote(path: str, write) -> None:
    with tempfile.TemporaryDirectory(prefix="tf_lottery_") as local_dir:
        local = os.path.join(local_dir, path.rsplit("/", 1)[-1])
        write(local)
        _put(local, path)


def atomic_write(path: str, write) -> None:
    """Calls ``write(tmp_path)`` (a local path) and renames the result to ``path``."""
    if not is_local(path):
        _atomic_write_remote(path, write)
        return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


def read_bytes(path: str) -> bytes:
    """The content of ``path`` (local or any ``tf.io.gfile`` filesystem)."""
    with gfile.GFile(path, "rb") as f:
        return f.read()


@contextlib.contextmanager
def local_copy(path: str):
    """``path`` itself if local, else a local temporary copy (for h5py and the like)."""
    if is_local(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tf_lottery_") as local_dir:
        local = os.path.join(local_dir, path.rsplit("/", 1)[-1])
        gfile.copy(path, local, overwrite=True)
        yield local


def upload_tree(local_dir: str, path: str, last: Sequence[str] = ()) -> List[str]:
    """Copies the local folder ``local_dir`` to ``path`` on a ``tf.io.gfile`` filesystem.

    File by file, each under a temporary name and renamed, so no file is ever half
    written; the files named in ``last`` (paths relative to ``local_dir``) go after all
    the others. Object stores have no atomic folder rename: a reader treats the folder
    as complete once its ``last`` files exist.

    Returns:
      the relative paths copied, in order.
    """
    files = []
    for root, _, names in os.walk(local_dir):
        files += [os.path.relpath(os.path.join(root, n), local_dir).replace(os.sep, "/")
                  for n in sorted(names)]
    files = [f for f in files if f not in last] + [f for f in last if f in files]
    for rel in files:
        _put(os.path.join(local_dir, rel), path.rstrip("/") + "/" + rel)
    return files


def download_tree(path: str, local_dir: str, skip: Sequence[str] = ()) -> None:
    """Copies the ``tf.io.gfile`` folder ``path`` into the local folder ``local_dir``,
    leaving out top-level entries whose names match a pattern in ``skip`` (fnmatch)."""
    if not gfile.isdir(path):
        return
    root = path.rstrip("/")
    for folder, _, names in gfile.walk(root):
        rel = folder[len(root):].strip("/")
        top = (rel.split("/", 1)[0] if rel else None)
        if top is not None and any(fnmatch.fnmatch(top, p) for p in skip):
            continue
        os.makedirs(os.path.join(local_dir, rel), exist_ok=True)
        for name in names:
            if not rel and any(fnmatch.fnmatch(name, p) for p in skip):
                continue
            gfile.copy(f"{folder.rstrip('/')}/{name}", os.path.join(local_dir, rel, name),
                       overwrite=True)
