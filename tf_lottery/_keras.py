"""The one place that imports tf_keras (Keras 2) and tfmot for the tf_keras path.

Every tf_keras module of tf_lottery imports ``keras`` (= ``tf_keras``), ``tf`` and
``tfmot`` from here and never uses ``tf.keras``, so nothing here needs ``tf.keras`` to be
Keras 2. ``tf.keras`` stays whatever the user's process makes it (Keras 3 unless the
user sets ``TF_USE_LEGACY_KERAS=1``): a process that only uses Keras 3 (``import keras``,
``tf.keras``) is not switched to Keras 2 by importing tf_lottery.

tfmot 0.8.1's ``compat`` module sets ``TF_USE_LEGACY_KERAS=1`` at import and reads
``tf.keras.version``, which would settle TensorFlow's lazy ``tf.keras`` on Keras 2 for
the whole process. So tfmot is imported while ``tf.keras`` temporarily points at
tf_keras (tfmot then takes tf_keras as its Keras, as it would anyway), and afterwards
``tf.keras`` gets back its untouched lazy loader and the variable its previous value.
"""
import os
import sys

from tf_lottery import _backend, _quiet

_quiet.install_for_binaries()  # before TensorFlow loads: the binaries' logs stay readable
_backend.select_for_binaries()  # before TensorFlow loads, which imports Keras 3

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

_LEGACY = "TF_USE_LEGACY_KERAS"


def _import_tfmot():
    if "tensorflow_model_optimization" in sys.modules:
        import tensorflow_model_optimization
        return tensorflow_model_optimization
    previous_env = os.environ.get(_LEGACY)
    previous_keras = tf.__dict__.get("keras")
    tf.keras = keras
    try:
        import tensorflow_model_optimization
    finally:
        if previous_keras is not None:
            tf.keras = previous_keras
        else:
            del tf.keras  # back to TensorFlow's lazy attribute, which picks Keras 3
        if previous_env is None:
            os.environ.pop(_LEGACY, None)
        else:
            os.environ[_LEGACY] = previous_env
    return tensorflow_model_optimization


tfmot = _import_tfmot()


def loaded_keras3():
    """The Keras 3 module (``import keras``) if this process has imported it, else None;
    never imports it (Keras 3 fixes its backend when it loads)."""
    keras3 = sys.modules.get("keras")
    if keras3 is None or not str(getattr(keras3, "__version__", "")).startswith("3."):
        return None
    return keras3

__all__ = ["tf", "keras", "tfmot"]
