"""Dynamic sparse training of Keras 3 models data-parallel on 2 CPU devices, run once per
backend by tests/test_keras3.py (with --noconftest, see distributed_devices.py).

TensorFlow: ``tf.distribute.MirroredStrategy`` (the model built and compiled in its
scope, ``fit`` outside it, as Keras allows). JAX: ``keras.distribution.DataParallel``
(everything inside it, so that ``fit`` shards the batches). RigL and SET as ``fit``
callbacks and SNFS through ``tfl.SparseOptimizer`` compiled into the model: after two
epochs (mask updates at steps 2, 4, 6) every device holds the same masks and exact zeros
where masked, every weight keeps its number of active entries, the masks moved, and
masks and weights are those of the same training on one device (same data order, seeds
and global batch). A second RigL fit reuses the compiled steps and trains from masks set
between the fits, on every device.
"""
import contextlib

import distributed_devices as devices  # first: sets up the devices

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_lottery as tfl  # noqa: E402

BACKEND = devices.BACKEND
L = keras.layers
UPDATE_STEPS = [2, 4, 6]  # delta_t = 2, end_step = 7, 4 steps per epoch, 2 epochs


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    x = L.Dense(32, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, L.Dense(4, name="d2")(x))


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(64, 16)).astype("float32"),
            rng.normal(size=(64, 4)).astype("float32"))


REFERENCE = [np.asarray(w) for w in _mlp().get_weights()]  # one start for every run

METHODS = {
    "rigl": lambda: tfl.RigL(delta_t=2, end_step=7, alpha=0.4, seed=5),
    "set": lambda: tfl.SET(delta_t=2, end_step=7, alpha=0.4, seed=5),
    "snfs": lambda: tfl.SNFS(delta_t=2, end_step=7, alpha=0.4, seed=5),
}


@pytest.fixture(scope="module")
def parallel():
    return devices.data_parallel()


def _train(setting, name, through):
    """Sparsifies and trains the MLP under ``setting`` with method ``name`` as a ``fit``
    callback or through a compiled ``tfl.SparseOptimizer``; returns (model, method,
    initial masks)."""
    x, y = _data()
    method = METHODS[name]()
    with setting():
        model = _mlp()
        model.set_weights(REFERENCE)
        sparse = tfl.sparsify(model, 0.75, "erk", seed=0)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        if through == "optimizer":
            optimizer = tfl.SparseOptimizer(optimizer, sparse, method)
        sparse.compile(optimizer, "mse")
    initial = tfl.get_masks(sparse)
    # JAX shards the batches only inside the distribution; a TF strategy is the model's
    with setting() if BACKEND == "jax" else contextlib.nullcontext():
        sparse.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                   callbacks=[method] if through == "callback" else [])
    return sparse, method, initial


@pytest.mark.parametrize("name,through", [("rigl", "callback"), ("set", "callback"),
                                          ("snfs", "optimizer")])
def test_mask_updates_agree_on_every_device_and_with_one_device(parallel, name, through):
    sparse, method, initial = _train(parallel, name, through)
    masks = devices.check_replicated(sparse)
    moved = 0
    for key, mask in masks.items():
        assert int(mask.sum()) == int(initial[key].sum()), key
        moved += int(np.sum(mask != initial[key]))
    assert moved > 0  # the updates changed the masks
    if through == "callback":  # one record per update
        assert [r["step"] for r in method.history] == UPDATE_STEPS
        for record in method.history:
            assert record["grown"] == record["dropped"]
            assert record["active"] == {k: int(m.sum()) for k, m in initial.items()}
        assert sum(sum(r["dropped"].values()) for r in method.history) > 0
    else:
        assert sparse.optimizer.update_count == len(UPDATE_STEPS)
        assert sparse.optimizer.last_update()["step"] == UPDATE_STEPS[-1]

    single, single_method, single_initial = _train(devices.one_device, name, through)
    for key, mask in tfl.get_masks(single).items():
        np.testing.assert_array_equal(single_initial[key], initial[key])
        np.testing.assert_array_equal(masks[key], mask, err_msg=key)
    weights = tfl.get_weights(sparse)
    for key, value in tfl.get_weights(single).items():
        np.testing.assert_allclose(weights[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
    if through == "callback":
        assert method.history == single_method.history
    if name == "rigl":  # a second fit: the first one's compiled steps, from masks set between
        traces = method.update_traces
        rng = np.random.default_rng(1)
        moved = {k: rng.permutation(m.ravel()).reshape(m.shape) for k, m in masks.items()}
        with parallel():
            tfl.set_masks(sparse, moved)
        method.total_steps = 16  # steps 9-12, past end_step=7: no update
        x, y = _data()
        with parallel() if BACKEND == "jax" else contextlib.nullcontext():
            sparse.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                       callbacks=[method])
        after = devices.check_replicated(sparse)
        for key, mask in moved.items():
            np.testing.assert_array_equal(after[key], mask, err_msg=key)
        assert method.update_traces == traces
