"""``tf.distribute`` plumbing of the Keras 3 sparse-training wrapper (TensorFlow backend).

Under ``MirroredStrategy`` or ``MultiWorkerMirroredStrategy`` a Keras 3 training step runs
once per replica (replica context). The wrapper's mask update must give every replica the
same masks, so:

- the dense gradients the grow rule reads (RigL) and SNFS's momentum are summed across
  replicas first (``sum_over_replicas``), as the wrapped optimizer does for the weight
  update; Keras 3 has no public switch to let that optimizer skip its own all-reduce, so
  this is one extra all-reduce of the masked weights' gradients per step (SET, static
  sparse and pruning need none);
- the update itself runs once, in cross-replica context (``in_cross_replica``: a
  ``merge_call``), where writing a mirrored variable writes every replica's copy; its
  inputs (mirrored weights and state, summed gradients, stateless seeds) are the same on
  every replica and worker.

On JAX (``keras.distribution``) and PyTorch every helper here is a no-op: a JAX step is one
program over all devices, whose gradients are already the global batch's.
"""
import contextlib

import keras


def multi_replica_context():
    """The ``tf.distribute`` replica context of a step run by more than one replica, or None
    (another backend, no strategy, one replica, or cross-replica context)."""
    if keras.config.backend() != "tensorflow":
        return None
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def sum_over_replicas(values: dict) -> dict:
    """``values`` (key -> tensor, one per replica) summed across the replicas of the
    current step, in one all-reduce; unchanged outside a multi-replica step."""
    context = multi_replica_context()
    if context is None or not values:
        return values
    import tensorflow as tf
    keys = list(values)
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, [values[k] for k in keys])
    return dict(zip(keys, summed))


def in_cross_replica(fn) -> None:
    """Runs ``fn()`` once for all replicas (in cross-replica context) inside a multi-replica
    step, or just runs it. ``fn`` must read only values that are equal on every replica."""
    context = multi_replica_context()
    if context is None:
        fn()
    else:
        context.merge_call(lambda strategy: fn())


def strategy_scope(model):
    """The scope of ``model``'s ``tf.distribute`` strategy if none is entered (TensorFlow),
    so that variables created in it are mirrored like the model's; else a null context."""
    if keras.config.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf
    strategy = getattr(model, "distribute_strategy", None)
    if strategy is None or tf.distribute.has_strategy() or strategy is tf.distribute.get_strategy():
        return contextlib.nullcontext()
    return strategy.scope()
