"""The identity of a run: JSON-able descriptions of what determines its results.

``IterativeMagnitudePruning.config`` is built from these; ``results.RunDirectory`` compares
it with the one kept in a run folder, so a second run into the same folder must describe
its callables and data the same way.
"""
from typing import Mapping

import numpy as np

from tf_lottery._keras import tf
from tf_lottery.lottery import results


def describe(obj):
    """A stable, JSON-able description of a callable or object for the run config."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [describe(o) for o in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in obj.items()}
    func = getattr(obj, "func", None)
    if func is not None and hasattr(obj, "keywords"):
        return {"partial": describe(func), "args": describe(list(obj.args)),
                "keywords": describe(obj.keywords)}
    if hasattr(obj, "get_config"):
        try:
            return {"class": type(obj).__name__, "config": describe(obj.get_config())}
        except Exception:  # noqa: BLE001  (an object whose config cannot be read)
            pass
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', '')}.{name}"


def fingerprint(data):
    """A description of ``data`` (None, ``(x, y)`` arrays or a dataset): a dataset's
    element spec, or the arrays' shapes and SHA-256 digest (``results.digest``)."""
    if data is None:
        return None
    if isinstance(data, tf.data.Dataset):
        return {"dataset": str(data.element_spec)}
    arrays = [np.asarray(a) for a in data]
    return {"shapes": [list(a.shape) for a in arrays],
            "sha256": results.digest(arrays, max_bytes=1 << 24)}
