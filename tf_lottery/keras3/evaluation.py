"""Validation sums of a Keras 3 model for ``tf_lottery.lottery.evaluation.Evaluator``.

The tf_keras path traces one ``tf.function``; a Keras 3 model may run on JAX, so here
the logits come from the model's own compiled ``predict_on_batch`` (``jax.jit`` or
``tf.function``, whichever backend) and the sums are taken in numpy.
"""
import keras
import numpy as np


def batch_sums(model, loss):
    """``(x, y) -> (summed loss, correct predictions, examples)`` of ``model`` on one batch
    (inference mode); ``loss`` is a Keras 3 loss whose batch mean is used."""
    def sums(x, y):
        x, y = np.asarray(x), np.asarray(y)
        logits = np.asarray(model.predict_on_batch(x))
        n = float(len(logits))
        total = float(keras.ops.convert_to_numpy(loss(y, logits))) * n
        labels = y if y.ndim == 1 else np.argmax(y, axis=-1)
        correct = float(np.sum(labels.astype(np.int64) == np.argmax(logits, axis=-1)))
        return total, correct, n
    return sums
