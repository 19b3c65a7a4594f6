"""Atomic file writes that honour the umask, and moving a folder aside.

A process killed at any moment leaves either the old file or the new one, never half
of one. Used by run folders, plots and exports. ``tempfile`` creates its files 0600 and
its folders 0700 whatever the umask; ``atomic_write`` and ``honour_umask`` give them the
mode a plain ``open`` / ``os.makedirs`` would have (0644 / 0755 under umask 022), so a
colleague or a TensorBoard running as another user can read the results.
"""
import os
import tempfile
import time


def umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str) -> None:
    """Gives ``path`` (a file or a folder tree made by ``tempfile``) the usual modes:
    0666 & ~umask for files, 0777 & ~umask for folders."""
    mask = umask()
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                full = os.path.join(root, name)
                if not os.path.islink(full):
                    os.chmod(full, (os.stat(full).st_mode | 0o666) & 0o777 & ~mask)
    elif not os.path.islink(path):
        os.chmod(path, 0o666 & ~mask)


def atomic_write(path: str, write) -> None:
    """Calls ``write(tmp_path)`` and renames the result to ``path`` (mode 0666 & ~umask)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
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


def move_aside(path: str) -> str:
    """Renames ``path`` to ``path.old-<UTC time>`` (a free name); returns the new name.

    Nothing is deleted: replacing a folder keeps the old one beside it.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    base = os.path.normpath(path) + f".old-{stamp}"
    target, n = base, 1
    while os.path.lexists(target):
        n += 1
        target = f"{base}-{n}"
    os.replace(path, target)
    return target
