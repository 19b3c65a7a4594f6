"""Validation sums of a Keras 3 model for ``tf_lottery.lottery.evaluation.Evaluator``.

The tf_keras path traces one ``tf.function``; a Keras 3 model may run on JAX, so here
the logits come from the model's own compiled ``predict_on_batch`` (``jax.jit`` or
``tf.function``, whichever backend; ``predict`` under a multi-replica ``tf.distribute``
strategy) and the sums are taken in numpy.
"""
import keras
import numpy as np


def batch_sums(model, loss):
    """``(x, y) -> (summed loss, correct predictions, examples)`` of ``model`` on one batch
    (inference mode); ``loss`` is a Keras 3 loss (or a function giving per-example
    losses) whose batch mean is used."""
    if isinstance(loss, keras.losses.Loss):
        # unreduced: Loss.__call__ divides its mean by the replicas of a tf.distribute
        # strategy in scope (for summing across replicas), which this sum never does
        def per_example(y, logits):
            return loss.call(keras.ops.convert_to_tensor(y, loss.dtype),
                             keras.ops.convert_to_tensor(logits, loss.dtype))
    else:
        per_example = loss
    strategy = getattr(model, "distribute_strategy", None)  # tf.distribute (TensorFlow only)
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        # predict_on_batch gives every replica the whole batch (Keras 3.15 returns their
        # outputs concatenated); predict splits it between them
        def predict(x):
            return model.predict(x, batch_size=len(x), verbose=0)
    else:
        predict = model.predict_on_batch

    def sums(x, y):
        x, y = np.asarray(x), np.asarray(y)
        logits = np.asarray(predict(x))
        n = float(len(logits))
        total = float(np.mean(keras.ops.convert_to_numpy(per_example(y, logits)))) * n
        labels = y if y.ndim == 1 else np.argmax(y, axis=-1)
        correct = float(np.sum(labels.astype(np.int64) == np.argmax(logits, axis=-1)))
        return total, correct, n
    return sums
