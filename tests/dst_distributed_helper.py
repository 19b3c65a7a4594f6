"""Subprocess side of tests/test_distributed.py (not collected by pytest).

Distributed runs need a fresh TensorFlow process: logical devices must be configured
before TensorFlow initialises them, and MultiWorkerMirroredStrategy reads TF_CONFIG at
start-up. Usage:

    python dst_distributed_helper.py mirrored OUT.npz
        Configures 2 logical CPUs, trains the same sparsified model with RigL (and SET) once
        under MirroredStrategy over both and once on one device with the same global
        batch, through fit and (RigL) through tfl.SparseOptimizer in a custom loop, and
        saves masks and weights of every run to OUT.npz.

    TF_CONFIG=... python dst_distributed_helper.py multiworker OUT.json
        One worker of a MultiWorkerMirroredStrategy run (fit with the RigL callback, then
        RigL through tfl.SparseOptimizer in a custom loop); writes mask and weight checksums.
"""
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

GLOBAL_BATCH = 16
STEPS = 12


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * STEPS, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 5, size=(GLOBAL_BATCH * STEPS,)).astype("int32")
    return x, y


def _build(keras, tf, weights=None):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(24, activation="tanh", name="d1")(h)
    outputs = keras.layers.Dense(5, name="d2")(h)
    model = keras.Model(inputs, outputs)
    if weights is not None:
        model.set_weights(weights)
    return model


def _train(strategy, method, weights, tfl, keras, tf):
    x, y = _data()
    with strategy.scope():
        model = tfl.sparsify(_build(keras, tf, weights), 0.7, "erk", seed=3)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    callback = method(delta_t=2, end_step=10, alpha=0.4, seed=5)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    return model, callback


def _train_loop(strategy, weights, tfl, keras, tf):
    """RigL through tfl.SparseOptimizer in a custom loop (strategy.run in a tf.function)."""
    x, y = _data()
    with strategy.scope():
        model = tfl.sparsify(_build(keras, tf, weights), 0.7, "erk", seed=3)
        opt = tfl.SparseOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), model,
                                  tfl.RigL(delta_t=2, end_step=10, alpha=0.4, seed=5))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=keras.losses.Reduction.NONE)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH))

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(loss_fn(yb, model(xb, training=True)),
                                              global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    for batch in dataset:
        step(batch)
    return model, opt


def _replica_masks(model, key, arrays, prefix, tfl):
    """Every replica's copy of the mask ``key``, into ``arrays``."""
    for layer in tfl.masked_layers(model):
        for wname, (_, var) in zip(layer.weight_names, layer.masked_weights):
            if f"{layer.layer.name}/{wname}" == key and hasattr(var, "values"):
                for i, component in enumerate(var.values):
                    arrays[f"{prefix}/replica{i}/{key}"] = component.numpy()


def mirrored(out):
    import tensorflow as tf_raw

    cpu = tf_raw.config.list_physical_devices("CPU")[0]
    tf_raw.config.set_logical_device_configuration(
        cpu, [tf_raw.config.LogicalDeviceConfiguration()] * 2)
    import tf_lottery as tfl
    import tf_lottery.dst  # noqa: F401
    from tf_lottery._keras import keras, tf

    weights = _build(keras, tf).get_weights()
    arrays = {}
    initial = tfl.sparsify(_build(keras, tf, weights), 0.7, "erk", seed=3)
    for key, mask in tfl.get_masks(initial).items():
        arrays[f"initial/mask/{key}"] = mask
    for name, method in (("rigl", tfl.dst.RigL), ("set", tfl.dst.SET)):
        for kind, strategy in (
                ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
                ("single", tf.distribute.get_strategy())):
            model, callback = _train(strategy, method, weights, tfl, keras, tf)
            if kind == "mirrored":
                assert strategy.num_replicas_in_sync == 2
            arrays[f"{name}/{kind}/updates"] = np.array(len(callback.history))
            arrays[f"{name}/{kind}/traces"] = np.array(callback.update_traces)
            for key, mask in tfl.get_masks(model).items():
                arrays[f"{name}/{kind}/mask/{key}"] = mask
                # every replica's copy of the mask: they must be identical
                for layer in tfl.masked_layers(model):
                    for wname, (_, var) in zip(layer.weight_names, layer.masked_weights):
                        if f"{layer.layer.name}/{wname}" == key and hasattr(var, "values"):
                            for i, component in enumerate(var.values):
                                arrays[f"{name}/{kind}/replica{i}/{key}"] = component.numpy()
            for key, value in tfl.get_weights(model).items():
                arrays[f"{name}/{kind}/weight/{key}"] = value
    for kind, strategy in (("loop_mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
                           ("loop_single", tf.distribute.get_strategy())):
        model, opt = _train_loop(strategy, weights, tfl, keras, tf)
        arrays[f"rigl/{kind}/updates"] = np.array(opt.method.engine.update_traces)
        arrays[f"rigl/{kind}/last_step"] = np.array(opt.last_update()["step"])
        for key, mask in tfl.get_masks(model).items():
            arrays[f"rigl/{kind}/mask/{key}"] = mask
            _replica_masks(model, key, arrays, f"rigl/{kind}", tfl)
        for key, value in tfl.get_weights(model).items():
            arrays[f"rigl/{kind}/weight/{key}"] = value
    np.savez(out, **arrays)


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def multiworker(out):
    import tf_lottery as tfl
    import tf_lottery.dst  # noqa: F401
    from tf_lottery._keras import keras, tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    initial = tfl.get_masks(tfl.sparsify(_build(keras, tf), 0.7, "erk", seed=3))
    model, callback = _train(strategy, tfl.dst.RigL, None, tfl, keras, tf)
    masks = tfl.get_masks(model)
    weights = tfl.get_weights(model)
    loop_model, _ = _train_loop(strategy, None, tfl, keras, tf)  # SparseOptimizer
    loop_masks = tfl.get_masks(loop_model)
    result = {
        "loop_mask_sha256": {k: _digest(v) for k, v in loop_masks.items()},
        "task": json.loads(os.environ["TF_CONFIG"])["task"]["index"],
        "replicas": strategy.num_replicas_in_sync,
        "updates": len(callback.history),
        "active": {k: int(v.sum()) for k, v in masks.items()},
        "mask_sha256": {k: _digest(v) for k, v in masks.items()},
        "initial_mask_sha256": {k: _digest(v) for k, v in initial.items()},
        "weight_sum": {k: float(np.abs(v).sum()) for k, v in weights.items()},
    }
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    {"mirrored": mirrored, "multiworker": multiworker}[sys.argv[1]](sys.argv[2])
