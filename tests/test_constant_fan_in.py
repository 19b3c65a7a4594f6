"""Constant fan-in masks (tfl.sparsify(structure="constant_fan_in")) and the per-unit
drop/grow that keeps them through RigL, SET and SNFS updates."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.dst import updaters
from tf_lottery.masking import selection


def test_constant_fan_in_mask_counts_and_magnitude():
    rng = np.random.default_rng(0)
    mask = selection.constant_fan_in_mask((3, 3, 8, 5), 0.9, rng=rng)
    np.testing.assert_array_equal(selection.fan_in_counts(mask), [7] * 5)  # 72 - round(64.8)
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) * np.array([1, -1, 1])
    mask = selection.constant_fan_in_mask(weight.shape, 0.5, weight=weight)
    np.testing.assert_array_equal(mask[2:], 1.0)
    np.testing.assert_array_equal(mask[:2], 0.0)


def test_per_unit_select_keeps_each_units_count():
    rng = np.random.default_rng(1)
    mask = selection.constant_fan_in_mask((10, 4), 0.6, rng=rng)
    weight = rng.normal(size=(10, 4)).astype(np.float32) * mask
    grad = np.zeros((10, 4), np.float32)
    grad[9, :] = 5.0  # each unit grows input 9 unless it already has it
    state = updaters.UnitState(tf.constant(weight), tf.constant(mask), tf.constant(grad),
                               seed=updaters.unit_seed(0, 0, 1))
    new = updaters.RigLUpdater("constant_fan_in").new_mask(state, 0.5).numpy()
    np.testing.assert_array_equal(selection.fan_in_counts(new), [4, 4, 4, 4])
    assert np.all(new[9] == 1.0)
    for j in range(4):  # the two largest |w| of each unit are kept
        active = np.flatnonzero(mask[:, j])
        top = active[np.argsort(-np.abs(weight[active, j]), kind="stable")[:2]]
        assert np.all(new[top, j] == 1.0)
    with pytest.raises(ValueError, match="unknown structure"):
        updaters.RigLUpdater("blocks")


@pytest.mark.parametrize("callback", [tfl.RigL, tfl.SET])
def test_constant_fan_in_survives_training_updates(callback):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="tanh", name="d1")(x)
    outputs = keras.layers.Dense(5, name="d2")(x)
    model = tfl.sparsify(keras.Model(inputs, outputs), 0.8, "erk", seed=0,
                         structure="constant_fan_in")
    before = tfl.get_masks(model)
    counts = {k: selection.fan_in_counts(m) for k, m in before.items()}
    for k, c in counts.items():
        assert len(set(c.tolist())) == 1, k
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(48, 6, 6, 1)).astype("float32")
    ys = rng.integers(0, 5, size=48)
    cb = callback(delta_t=2, end_step=6, alpha=0.5, structure="constant_fan_in")
    model.fit(xs, ys, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    after = tfl.get_masks(model)
    changed = sum(int(np.sum(before[k] != after[k])) for k in before)
    assert changed > 0
    for k, mask in after.items():
        np.testing.assert_array_equal(selection.fan_in_counts(mask), counts[k], err_msg=k)
    for layer in tfl.masked_layers(model):
        for w, m in layer.masked_weights:
            assert np.all(w.numpy()[m.numpy() == 0] == 0)


def test_sparsify_structure_errors():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="unknown structure"):
        tfl.sparsify(model, 0.5, structure="blocky")
    with pytest.raises(ValueError, match="per-layer sparsity"):
        tfl.sparsify(model, 0.5, "global", mask_init="magnitude", structure="constant_fan_in")
