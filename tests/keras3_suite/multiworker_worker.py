"""One worker of a two-worker ``MultiWorkerMirroredStrategy`` run of a Keras 3 model on the
TensorFlow backend, for suite_distributed.py (not a test file; the tf_keras twin is
tests/dst_distributed_helper.py). TF_CONFIG names the cluster (tests/workers.py).

    python multiworker_worker.py OUT.json

Each worker seeds itself differently, so the initial weights agree only because the
strategy broadcasts the chief's, and the masks of ``tfl.sparsify(seed=None)`` only because
sparsify takes the chief's seed. Then 4 steps of RigL through ``tfl.SparseOptimizer`` in a
custom loop (``strategy.run`` in a ``tf.function``; mask updates at steps 2 and 4),
``tfl.check_masks_agree``, and the worker writes digests of its masks and weights, its
counts and its last update to OUT.json. Not ``fit``: Keras 3.15's ``fit`` fails under
this strategy before training (keras-team/keras#20585).
"""
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_lottery as tfl  # noqa: E402

GLOBAL_BATCH = 16


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def main(out):
    assert keras.config.backend() == "tensorflow"
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(100 + task)  # a different seed on each worker
    with strategy.scope():
        inputs = keras.Input((16,))
        h = keras.layers.Dense(32, activation="relu", name="d1")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(4, name="d2")(h))
        sparse = tfl.sparsify(model, 0.75, "erk")  # seed=None: the chief's seed
        optimizer = tfl.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), sparse,
                                        tfl.RigL(delta_t=2, end_step=5, alpha=0.4, seed=5))
    initial = tfl.get_masks(sparse)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * 4, 16)).astype("float32")
    y = rng.normal(size=(GLOBAL_BATCH * 4, 4)).astype("float32")
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH))

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            per_example = tf.reduce_mean(tf.square(sparse(xb, training=True) - yb), axis=-1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        variables = sparse.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    for batch in batches:
        step(batch)
    masks = tfl.get_masks(sparse)
    zeros_broken = 0  # masked entries that are not 0, on this worker's copy
    for layer in tfl.masked_layers(sparse):
        for weight, mask in layer.masked_weights:
            for w, m in zip(weight.value.values, mask.value.values):
                zeros_broken += int(np.count_nonzero(w.numpy()[m.numpy() == 0]))
    result = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "agree_digest": tfl.check_masks_agree(sparse),
        "initial_masks": {k: _digest(v) for k, v in initial.items()},
        "initial_active": {k: int(v.sum()) for k, v in initial.items()},
        "masks": {k: _digest(v) for k, v in masks.items()},
        "active": {k: int(v.sum()) for k, v in masks.items()},
        "moved": {k: int(np.sum(masks[k] != initial[k])) for k in masks},
        "weights": {k: _digest(v) for k, v in tfl.get_weights(sparse).items()},
        "zeros_broken": zeros_broken,
        "update_count": optimizer.update_count,
        "last_update": optimizer.last_update(),
    }
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1])
