"""Identical masks on every replica and worker: one seed for a fresh draw, and a check.

Under ``MultiWorkerMirroredStrategy`` every worker is its own Python process, so masks
drawn from an unseeded random generator would differ between workers while the
weights (which the strategy broadcasts from the chief) agree. ``chief_seed`` gives
every worker the chief's seed (one all-reduce of a scalar), and ``digests`` /
``check_agree`` compare a digest of every mask across all replicas and workers (one
all-gather), so a disagreement fails loudly instead of training silently diverging
models.

A mask's digest is 12 exact small numbers: the count of kept entries and two sums of a
position hash over the kept entries, in int64 (order-independent, so every device
computes the same value), each split into 16-bit chunks that float32 holds exactly.
"""
import hashlib
from typing import List, Optional, Sequence

import numpy as np

from tf_lottery._keras import tf

_CHUNKS = 4  # 16-bit chunks per int64 value
_HASHES = ((2654435761, 1, 2147483647), (2246822519, 7, 2147483629))  # (a, b, prime)


def current_strategy(model=None) -> tf.distribute.Strategy:
    """The strategy in whose scope we are, else the one ``model`` was built under."""
    if tf.distribute.has_strategy() or model is None:
        return tf.distribute.get_strategy()
    return model.distribute_strategy


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a ``MultiWorkerMirroredStrategy`` whose cluster has more than one worker."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return len(spec.get("worker", [])) + len(spec.get("chief", [])) > 1


def _from_first_replica(strategy, values: np.ndarray) -> np.ndarray:
    """``values`` (float32, exact) as replica 0 (on the chief) holds them, on every worker."""
    def replica_fn(local):
        ctx = tf.distribute.get_replica_context()
        first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), local.dtype)
        return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local * first)

    @tf.function
    def run(local):
        return strategy.run(replica_fn, args=(local,))

    out = run(tf.constant(values, tf.float32))
    return strategy.experimental_local_results(out)[0].numpy()


def chief_seed(seed: int, strategy: tf.distribute.Strategy) -> int:
    """``seed`` (an int in [0, 2**64)) as the chief has it, under a multi-worker strategy.

    Every worker must call this at the same point (it is a collective operation);
    with a single worker it returns ``seed`` unchanged.
    """
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an int in [0, 2**64), got {seed}")
    if not is_multi_worker(strategy):
        return seed
    chunks = np.array([(seed >> (16 * k)) & 0xFFFF for k in range(_CHUNKS)], np.float32)
    chief = _from_first_replica(strategy, chunks)
    return sum(int(c) << (16 * k) for k, c in enumerate(chief))


def _digest(mask) -> tf.Tensor:
    """float32[12]: count of kept entries and two position hashes over them, exactly."""
    kept = tf.reshape(tf.not_equal(mask, 0), [-1])
    index = tf.range(tf.size(kept, out_type=tf.int64), dtype=tf.int64)
    values = [tf.reduce_sum(tf.cast(kept, tf.int64))]
    for a, b, prime in _HASHES:
        hashed = tf.math.floormod(index * a + b, prime)
        values.append(tf.reduce_sum(tf.where(kept, hashed, tf.zeros_like(hashed))))
    values = tf.stack(values)
    chunks = [tf.bitwise.bitwise_and(tf.bitwise.right_shift(values, tf.constant(16 * k, tf.int64)),
                                     tf.constant(0xFFFF, tf.int64)) for k in range(_CHUNKS)]
    return tf.cast(tf.reshape(tf.stack(chunks, axis=1), [-1]), tf.float32)


def digests(masks: Sequence[tf.Variable], strategy: tf.distribute.Strategy) -> np.ndarray:
    """float32[replicas, len(masks), 12]: every replica's digest of every mask.

    With more than one replica this is one all-gather across all replicas and workers
    (each replica reads its own copy of a mirrored mask); every worker gets all rows.
    """
    if strategy.num_replicas_in_sync == 1:
        return np.stack([_digest(m).numpy() for m in masks])[None]

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        local = tf.stack([_digest(tf.convert_to_tensor(m)) for m in masks])
        return ctx.all_gather(local[None], axis=0)

    @tf.function
    def run():
        return strategy.run(replica_fn)

    return strategy.experimental_local_results(run())[0].numpy()


def check_agree(keys: Sequence[str], masks: Sequence[tf.Variable],
                strategy: Optional[tf.distribute.Strategy] = None) -> str:
    """Raises RuntimeError unless every replica and worker holds the same ``masks``.

    Returns:
      a hex digest of the masks (the same string on every worker when they agree).
    """
    strategy = strategy or tf.distribute.get_strategy()
    table = digests(masks, strategy)
    per_worker = max(1, len(strategy.extended.worker_devices)) if table.shape[0] > 1 else 1
    bad: List[str] = []
    for replica in range(1, table.shape[0]):
        differ = [k for k, a, b in zip(keys, table[0], table[replica]) if not np.array_equal(a, b)]
        if differ:
            bad.append(f"replica {replica} (worker {replica // per_worker}) on {differ}")
    if bad:
        raise RuntimeError(
            "masks differ from replica 0's (the chief's): " + "; ".join(bad) + ". Draw masks "
            "the same way on every worker: call tfl.sparsify inside strategy.scope() (it "
            "then takes the chief's seed) or pass the same seed= everywhere, and change masks "
            "only through tf-lottery's updates")
    return hashlib.sha256(np.ascontiguousarray(table[0]).tobytes()).hexdigest()[:16]
