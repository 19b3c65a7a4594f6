"""Weight files of Keras 3 models under the names tf-lottery's run folders use.

Keras 3 writes and reads weights only under a name ending in ``.weights.h5``; IMP's run
folder keeps ``level_<i>/weights.h5`` for both Kerases. These helpers go through a
private ``.weights.h5`` path (a hard link when possible, else a copy), so the caller's
name and atomic write are kept.
"""
import json
import os
import shutil
import tempfile
import zipfile

from tf_lottery._io import gfile, is_local


def _save_local(save, path: str, name: str) -> None:
    """``save(file)`` into a file named ``name`` (Keras 3 checks the suffix), moved to the local
    file ``path`` (same folder: one rename)."""
    with tempfile.TemporaryDirectory(prefix="tf_lottery_", dir=os.path.dirname(path) or None) \
            as folder:
        named = os.path.join(folder, name)
        save(named)
        os.replace(named, path)


def save_weights(model, path: str) -> None:
    """``model.save_weights`` (Keras 3 format) into the local file ``path``."""
    _save_local(model.save_weights, path, "model.weights.h5")


def load_weights(model, path: str) -> None:
    """``model.load_weights`` from ``path`` (local or any ``tf.io.gfile`` filesystem)."""
    with tempfile.TemporaryDirectory(prefix="tf_lottery_") as folder:
        named = os.path.join(folder, "model.weights.h5")
        if is_local(path):
            try:
                os.link(path, named)
            except OSError:
                shutil.copyfile(path, named)
        else:
            gfile.copy(path, named, overwrite=True)
        model.load_weights(named)


def save_model(model, path: str) -> None:
    """``model.save`` in Keras 3's ``.keras`` format into the local file ``path``."""
    _save_local(model.save, path, "model.keras")


def load_model(path: str):
    """A model saved by ``save_model`` (local or remote ``path``), uncompiled."""
    import keras

    with tempfile.TemporaryDirectory(prefix="tf_lottery_") as folder:
        named = os.path.join(folder, "model.keras")
        gfile.copy(path, named, overwrite=True)
        return keras.saving.load_model(named, compile=False)


def is_keras3_archive(local: str) -> bool:
    """Whether the local file ``local`` is a model Keras 3 saved in its ``.keras`` format (a
    zip whose ``metadata.json`` names a Keras 3 version), whatever its name; tf_keras's
    ``.h5`` files and Keras 2 ``.keras`` archives are not."""
    if not zipfile.is_zipfile(local):
        return False
    with zipfile.ZipFile(local) as archive:
        if "metadata.json" not in archive.namelist():
            return False
        version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    return version.startswith("3.")
