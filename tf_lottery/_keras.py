"""The one place that makes tf_keras (Keras 2) the Keras in use.

tfmot's pruning API works only with Keras 2. TensorFlow picks the Keras behind
``tf.keras`` from ``TF_USE_LEGACY_KERAS`` when it is first used, so the flag is set
here, before TensorFlow is imported by anything in this package. Every module
of tf_lottery imports ``keras`` (and ``tf``, ``tfmot``) from here.
"""
import os

from tf_lottery import _quiet

_quiet.install_for_binaries()  # before TensorFlow loads: the binaries' logs stay readable
os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

__all__ = ["tf", "keras", "tfmot"]
