"""Masked Keras 3 models trained data-parallel on 2 CPU devices, run once per backend by
tests/test_keras3.py (with --noconftest: the devices must be set up before TensorFlow
starts; see distributed_devices.py). Sparse training: suite_distributed_dst.py.

TensorFlow: ``tf.distribute.MirroredStrategy`` over 2 logical CPUs, and a two-process
``MultiWorkerMirroredStrategy`` on localhost. JAX: ``keras.distribution.DataParallel``
over 2 host devices. Checks: masks identical (and replicated) on every device, exact
zeros on every device after fit and after a mask change, training moved the weights;
IMP with rewinding gives exact counts, rewinds every device, and prunes as on one device.
"""
import json
import os
import pathlib
import sys

import distributed_devices as devices  # first: sets up the devices

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_lottery as tfl  # noqa: E402
from tf_lottery.lottery import IterativeMagnitudePruning, results  # noqa: E402
from tf_lottery.masking import selection  # noqa: E402

BACKEND = devices.BACKEND
HERE = pathlib.Path(__file__).resolve().parent
L = keras.layers


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    x = L.Dense(32, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, L.Dense(4, name="d2")(x))


def _data(classes=False):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype("float32")
    if classes:
        return x, rng.integers(0, 4, size=64).astype("int32")
    return x, rng.normal(size=(64, 4)).astype("float32")


@pytest.fixture(scope="module")
def scope():
    return devices.data_parallel()


def test_masks_identical_and_zeros_exact_on_every_device(scope):
    x, y = _data()
    with scope():
        sparse = tfl.sparsify(_mlp(), 0.75, "erk", seed=0)
        sparse.compile(keras.optimizers.Adam(0.01), "mse")
        before = {k: v.copy() for k, v in tfl.get_weights(sparse).items()}
        sparse.fit(x, y, epochs=2, batch_size=16, verbose=0)
    masks = devices.check_replicated(sparse)
    assert len(tfl.check_masks_agree(sparse)) == 16
    after = tfl.get_weights(sparse)
    for key in before:
        assert not np.array_equal(after[key], before[key]), key  # it trained
    # an outside write into masked entries, then a mask change, then more training
    kernel, mask = tfl.masked_layers(sparse)[0].masked_weights[0]
    kernel.assign(keras.ops.convert_to_numpy(kernel.value) + 3.0 * (1 - masks["d1/kernel"]))
    rng = np.random.default_rng(5)
    new = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in masks.items()}
    tfl.set_masks(sparse, new)
    devices.check_replicated(sparse)
    with scope():
        sparse.fit(x, y, epochs=1, batch_size=16, verbose=0)
    got = devices.check_replicated(sparse)
    for key, mask_ in new.items():
        np.testing.assert_array_equal(got[key], mask_)
        assert int(np.sum(got[key] == 0)) == selection.count_zeros(mask_.size, 0.9)


def _write_on_one_device(mask, value):
    """Writes ``value`` into device 1's copy of ``mask`` only (what tf-lottery never does)."""
    if BACKEND == "tensorflow":
        mask.value.values[1].assign(value)
        return
    import jax
    current = mask.value
    buffers = [jax.device_put(value if i == 1 else np.asarray(shard.data), shard.device)
               for i, shard in enumerate(current.addressable_shards)]
    mask.assign(jax.make_array_from_single_device_arrays(current.shape, current.sharding,
                                                         buffers))


def test_check_masks_agree_names_the_device_that_differs(scope):
    with scope():
        sparse = tfl.sparsify(_mlp(), 0.5, "uniform", seed=0)
        digest = tfl.check_masks_agree(sparse)
        assert digest == tfl.check_masks_agree(tfl.sparsify(_mlp(), 0.5, "uniform", seed=0))
        assert digest != tfl.check_masks_agree(tfl.sparsify(_mlp(), 0.5, "uniform", seed=1))
        _, mask = tfl.masked_layers(sparse)[1].masked_weights[0]
        flipped = devices.per_device(mask)[0].copy()
        flipped[0, 0] = 1 - flipped[0, 0]
        _write_on_one_device(mask, flipped)
        assert len({a.tobytes() for a in devices.per_device(mask)}) == 2
        with pytest.raises(RuntimeError, match="d2/kernel"):
            tfl.check_masks_agree(sparse)


class _Recorded(IterativeMagnitudePruning):
    """IMP that records, when each training starts and ends, the weights and masks (checked
    replicated on every device when ``parallel``)."""

    def __init__(self, *args, parallel, **kwargs):
        super().__init__(*args, **kwargs)
        self.check = devices.check_replicated if parallel else tfl.get_masks
        self.starts, self.ends = [], []

    def _train(self, model, start, level, kind, *args, **kwargs):
        self.starts.append((level, start, tfl.get_weights(model), self.check(model)))
        row = super()._train(model, start, level, kind, *args, **kwargs)
        self.ends.append(self.check(model))
        return row


def _imp(setting, folder, parallel):
    import tensorflow as tf
    # batches in a fixed order: under a tf.distribute strategy Keras 3's fit reads one
    # pass of a dataset before training, which moves a reshuffling dataset's order
    train = tf.data.Dataset.from_tensor_slices(_data(classes=True)).batch(16)
    imp = _Recorded(_mlp, train, _data(classes=True),
                    lambda: keras.optimizers.SGD(0.05, momentum=0.9), parallel=parallel,
                    levels=2, epochs=2, batch_size=16, fraction=0.5, rewind_step="2it",
                    output_dir=str(folder), verbose=0)
    with setting():
        rows = imp.run()
    return imp, rows


def test_imp_with_rewinding_agrees_on_every_device_and_with_one_device(scope, tmp_path):
    imp, rows = _imp(scope, tmp_path / "parallel", parallel=True)
    assert [(r["level"], r["kind"]) for r in rows] == [(0, "ticket"), (1, "ticket")]
    assert rows[1]["remaining"] == 0.5
    sizes = {"d1/kernel": 16 * 32, "d2/kernel": 32 * 4}
    level1 = results.read_arrays(os.path.join(imp.output_dir, "level_1", "masks.npz"))
    for key, size in sizes.items():
        assert int(level1[key].sum()) == size - selection.count_zeros(size, 0.5)
        np.testing.assert_array_equal(imp.ends[1][key], level1[key])  # on every device
    # level 1 starts from theta_k (iteration 2) on the kept entries, on every device
    theta_k = results.read_arrays(os.path.join(imp.output_dir, "rewind_point.npz"))
    level, start, weights, masks = imp.starts[1]
    assert (level, start) == (1, 2)
    kernels = [v for k, v in sorted(theta_k.items()) if k.endswith("kernel")]  # d1, d2
    assert len(kernels) == len(sizes)
    for key, theta in zip(sizes, kernels):
        on = masks[key] == 1
        np.testing.assert_array_equal(weights[key][on], theta[on])
        assert not np.any(weights[key][~on])
    single, single_rows = _imp(devices.one_device, tmp_path / "single", parallel=False)
    for key in sizes:
        np.testing.assert_array_equal(single.ends[1][key], level1[key], err_msg=key)
    for row, single_row in zip(rows, single_rows):  # the test loss is the global batch's
        assert row["test_loss"] == pytest.approx(single_row["test_loss"], rel=1e-5)
        assert row["test_accuracy"] == single_row["test_accuracy"]


if BACKEND == "tensorflow":  # a two-process cluster: collected on TensorFlow only
    def test_two_workers_train_the_same_sparse_model(tmp_path):
        """MultiWorkerMirroredStrategy, one CPU per worker (multiworker_worker.py):
        sparsify (seed=None), RigL through tfl.SparseOptimizer in a strategy.run loop; both
        workers end with the same masks and weights, exact counts, exact zeros, and masks
        that moved."""
        sys.path.insert(0, str(HERE.parent))  # tests/workers.py, as the tf_keras tests use it
        from workers import run_workers
        outs = [tmp_path / f"worker{i}.json" for i in range(2)]
        run_workers(lambda i: [sys.executable, str(HERE / "multiworker_worker.py"),
                               str(outs[i])], 2, timeout=240)
        chief, worker = (json.loads(p.read_text()) for p in outs)
        assert (chief["task"], worker["task"]) == (0, 1)
        assert chief["replicas"] == worker["replicas"] == 2
        for key in ("agree_digest", "initial_masks", "masks", "weights", "last_update"):
            assert chief[key] == worker[key], key
        assert chief["active"] == chief["initial_active"]
        assert chief["zeros_broken"] == worker["zeros_broken"] == 0
        assert sum(chief["moved"].values()) > 0
        assert chief["update_count"] == worker["update_count"] == 2
        assert chief["last_update"]["step"] == 4
        assert chief["last_update"]["active"] == chief["initial_active"]


def test_binary_refuses_multi_worker_on_keras3(tmp_path):
    """Keras 3's fit fails under MultiWorkerMirroredStrategy, so ``tfl.train`` refuses it
    before starting (a custom loop with tfl.SparseOptimizer works: the test above)."""
    match = ("keras-team/keras#20585" if BACKEND == "tensorflow"
             else f"not available for Keras 3 on the {BACKEND} backend")
    with pytest.raises(ValueError, match=match):
        tfl.train(str(tmp_path / "run"), experiment=lambda **kwargs: None,
                  strategy="multi_worker", keras=3)
    assert not os.path.exists(tmp_path / "run")


def test_devices_seen():
    if BACKEND == "jax":
        import jax
        assert "--xla_force_host_platform_device_count=2" in os.environ.get("XLA_FLAGS", "")
        assert len(jax.devices("cpu")) == 2
    elif BACKEND == "tensorflow":
        import tensorflow as tf
        assert len(tf.config.list_logical_devices("CPU")) == 2
