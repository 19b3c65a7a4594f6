"""Shared by the Keras 3 data-parallel suites (suite_distributed*.py; not a test file).

Importing it sets up 2 devices, so import it before anything starts TensorFlow:
TensorFlow gets 2 logical CPUs (for ``tf.distribute.MirroredStrategy``); JAX needs
``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set by tests/test_keras3.py
before JAX loads (for ``keras.distribution.DataParallel``).
"""
import contextlib

import keras
import numpy as np

BACKEND = keras.config.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf
    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import tf_lottery as tfl  # noqa: E402

N_DEVICES = 2


def data_parallel():
    """A context manager factory: the 2-device data-parallel setting of this backend
    (entered around building, compiling and ``fit``); skips the test on PyTorch."""
    if BACKEND == "tensorflow":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == N_DEVICES
        return strategy.scope
    if BACKEND == "jax":
        import jax
        devices = jax.devices("cpu")
        assert len(devices) == N_DEVICES, "set XLA_FLAGS=--xla_force_host_platform_device_count=2"
        return keras.distribution.DataParallel(devices=devices).scope
    import pytest
    pytest.skip(f"no data-parallel test for the {BACKEND} backend")


def one_device():
    """The single-device setting the data-parallel runs are compared with."""
    return contextlib.nullcontext()


def per_device(variable):
    """The values of ``variable`` on each device (numpy arrays)."""
    value = variable.value
    if BACKEND == "tensorflow":
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(shard.data) for shard in value.addressable_shards]


def check_replicated(sparse, n_devices=N_DEVICES):
    """Every mask and masked weight of ``sparse`` is replicated on ``n_devices`` devices,
    the copies are identical, and masked entries are exactly 0 on every device; returns
    the masks (weight key -> array)."""
    masks = tfl.get_masks(sparse)
    for layer in tfl.masked_layers(sparse):
        for (weight, mask), name in zip(layer.masked_weights, layer.weight_names):
            expected = masks[f"{layer.layer.name}/{name}"]
            copies = per_device(mask)
            assert len(copies) == n_devices
            for copy in copies:
                np.testing.assert_array_equal(copy, expected)
            values = per_device(weight)
            assert len(values) == n_devices
            for value in values:
                assert value.shape == expected.shape  # replicated, not split
                assert np.count_nonzero(value[expected == 0]) == 0
                np.testing.assert_array_equal(value, values[0])
    return masks
