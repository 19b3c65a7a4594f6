"""Masked Keras 3 models trained data-parallel on 2 CPU devices, run once per backend by
tests/test_keras3.py (with --noconftest: the devices must be set up before TensorFlow starts).

TensorFlow: ``tf.distribute.MirroredStrategy`` over 2 logical CPUs. JAX:
``keras.distribution.DataParallel`` over 2 host devices (``XLA_FLAGS=
--xla_force_host_platform_device_count=2``, set by the parent before JAX loads). Checks:
masks identical (and replicated) on every device, exact zeros on every device after fit and
after a mask change, training moved the weights, and the replicas agree.
"""
import os

import keras

BACKEND = keras.config.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_lottery as tfl  # noqa: E402
from tf_lottery.masking import selection  # noqa: E402

L = keras.layers


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    x = L.Dense(32, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, L.Dense(4, name="d2")(x))


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 16)).astype("float32"),
            rng.normal(size=(64, 4)).astype("float32"))


def _per_device(variable):
    """The values of ``variable`` on each device (numpy arrays)."""
    value = variable.value
    if BACKEND == "tensorflow":
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(shard.data) for shard in value.addressable_shards]


def _check(sparse, n_devices=2):
    masks = tfl.get_masks(sparse)
    for layer in tfl.masked_layers(sparse):
        for (weight, mask), name in zip(layer.masked_weights, layer.weight_names):
            expected = masks[f"{layer.layer.name}/{name}"]
            copies = _per_device(mask)
            assert len(copies) == n_devices
            for copy in copies:
                np.testing.assert_array_equal(copy, expected)
            values = _per_device(weight)
            assert len(values) == n_devices
            for value in values:
                assert value.shape == expected.shape  # replicated, not split
                assert np.count_nonzero(value[expected == 0]) == 0
                np.testing.assert_array_equal(value, values[0])
    return masks


@pytest.fixture(scope="module")
def scope():
    if BACKEND == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        return strategy.scope
    if BACKEND == "jax":
        import jax
        devices = jax.devices("cpu")
        assert len(devices) == 2, "set XLA_FLAGS=--xla_force_host_platform_device_count=2"
        distribution = keras.distribution.DataParallel(devices=devices)
        return lambda: _jax_scope(distribution)
    pytest.skip(f"no data-parallel test for the {BACKEND} backend")


def _jax_scope(distribution):
    import contextlib

    @contextlib.contextmanager
    def scope():
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(distribution)
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)
    return scope()


def test_masks_identical_and_zeros_exact_on_every_device(scope):
    x, y = _data()
    with scope():
        sparse = tfl.sparsify(_mlp(), 0.75, "erk", seed=0)
        sparse.compile(keras.optimizers.Adam(0.01), "mse")
    before = {k: v.copy() for k, v in tfl.get_weights(sparse).items()}
    sparse.fit(x, y, epochs=2, batch_size=16, verbose=0)
    masks = _check(sparse)
    after = tfl.get_weights(sparse)
    for key in before:
        assert not np.array_equal(after[key], before[key]), key  # it trained
    # an outside write into masked entries, then a mask change, then more training
    kernel, mask = tfl.masked_layers(sparse)[0].masked_weights[0]
    kernel.assign(keras.ops.convert_to_numpy(kernel.value) + 3.0 * (1 - masks["d1/kernel"]))
    rng = np.random.default_rng(5)
    new = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in masks.items()}
    tfl.set_masks(sparse, new)
    _check(sparse)
    sparse.fit(x, y, epochs=1, batch_size=16, verbose=0)
    got = _check(sparse)
    for key, mask_ in new.items():
        np.testing.assert_array_equal(got[key], mask_)
        assert int(np.sum(got[key] == 0)) == selection.count_zeros(mask_.size, 0.9)


def test_devices_seen():
    if BACKEND == "jax":
        import jax
        assert "--xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", "")
        assert len(jax.devices("cpu")) == 2
    elif BACKEND == "tensorflow":
        assert len(tf.config.list_logical_devices("CPU")) == 2
