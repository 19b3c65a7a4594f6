"""Atomic file writes: a temporary file in the target's folder, then a rename.

A process killed at any moment leaves either the old file or the new one, never half
of one. Used by run folders, plots and exports.
"""
import os
import tempfile


def atomic_write(path: str, write) -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path``."""
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
