"""Optimizer state around mask writes and resets (tf_lottery.masking.state), and
``reinitialise`` covering every initialised weight."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.lottery.imp import reinitialise
from tf_lottery.masking import state


def _trained(optimizer, use_bias=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    outputs = keras.layers.Dense(3, use_bias=use_bias, name="d")(inputs)
    model = tfl.sparsify(keras.Model(inputs, outputs), 0.0, seed=0)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 5)), rng.normal(size=(8, 3)), epochs=2, verbose=0)
    return model


@pytest.mark.parametrize("make, initial", [
    (lambda: keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.25), 0.25),
    (lambda: keras.optimizers.Ftrl(0.1, initial_accumulator_value=0.5), 0.5),
    (lambda: keras.optimizers.legacy.Adagrad(0.1, initial_accumulator_value=0.25), 0.25),
], ids=["adagrad", "ftrl", "legacy_adagrad"])
def test_reset_gives_each_slot_its_real_initial_value(make, initial):
    model = _trained(make())
    optimizer = model.optimizer
    kernel = tfl.masked_layers(model)[0].masked_weights[0][0]
    slots, fills = state.optimizer_slots(optimizer, [kernel])[id(kernel)]
    assert initial in fills
    assert any(not np.allclose(s.numpy(), f) for s, f in zip(slots, fills))  # trained state
    state.reset_optimizer(optimizer, 5, model.trainable_variables)
    assert int(optimizer.iterations.numpy()) == 5
    for slot, fill in zip(slots, fills):
        np.testing.assert_array_equal(slot.numpy(), np.full(slot.shape, fill, "float32"))


def test_reset_sets_ema_copies_to_the_weights():
    model = _trained(keras.optimizers.Adam(0.1, use_ema=True))
    optimizer = model.optimizer
    kernel = tfl.masked_layers(model)[0].masked_weights[0][0]
    kernel.assign(np.full(kernel.shape, 2.0, "float32"))
    state.reset_optimizer(optimizer, 0, model.trainable_variables)
    ema = [v for v in optimizer._model_variables_moving_average if v.shape == kernel.shape]
    assert len(ema) == 1
    np.testing.assert_array_equal(ema[0].numpy(), kernel.numpy())
    moments = [s for s in state.optimizer_slots(optimizer, [kernel])[id(kernel)][0]
               if s is not ema[0]]
    assert len(moments) == 2 and all(not np.any(m.numpy()) for m in moments)


def test_set_masks_resets_only_the_entries_it_turns_off():
    model = _trained(keras.optimizers.Adam(0.1))
    kernel = tfl.masked_layers(model)[0].masked_weights[0][0]
    slots, _ = state.optimizer_slots(model.optimizer, [kernel])[id(kernel)]
    before = [s.numpy() for s in slots]
    mask = np.ones((5, 3), "float32")
    mask[0] = 0
    tfl.set_masks(model, {"d/kernel": mask})
    for old, slot in zip(before, slots):
        np.testing.assert_array_equal(slot.numpy()[0], 0)
        np.testing.assert_array_equal(slot.numpy()[1:], old[1:])
    assert not np.any(kernel.numpy()[0])


def test_set_masks_reaches_a_custom_loop_optimizer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = tfl.sparsify(keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs)), 0.0,
                         seed=0)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    x, y = tf.ones((4, 4)), tf.ones((4, 2))
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    mask = np.zeros((4, 2), "float32")
    mask[:, 0] = 1
    tfl.set_masks(model, {"d/kernel": mask}, optimizer=optimizer)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    np.testing.assert_array_equal(model.get_layer("masked_layer_d").layer.kernel.numpy()[:, 1], 0)


def test_reinitialise_draws_recurrent_kernels_and_embeddings_afresh():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), dtype="int32")
    x = keras.layers.Embedding(10, 6, name="emb")(inputs)
    x = keras.layers.LSTM(5, name="lstm")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    before = {v.name: v.numpy() for v in model.weights}
    reinitialise(model, seed=7)
    after = {v.name: v.numpy() for v in model.weights}
    changed = sorted(name for name in before if not np.array_equal(before[name], after[name]))
    assert changed == sorted([
        "emb/embeddings:0", "lstm/lstm_cell/kernel:0", "lstm/lstm_cell/recurrent_kernel:0",
        "out/kernel:0"]), changed
    bias = after["lstm/lstm_cell/bias:0"]   # zeros with unit_forget_bias ones: not random
    np.testing.assert_array_equal(bias, np.r_[np.zeros(5), np.ones(5), np.zeros(10)])
