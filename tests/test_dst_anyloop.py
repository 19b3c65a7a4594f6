"""tfl.SparseOptimizer: RigL and gradual magnitude pruning in a custom training loop, in a
model with its own train_step and in a subclassed model give exactly the masks that
model.fit with the callback gives, for the same data order and seed."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf, tfmot

BATCH, STEPS = 8, 12


def _data():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(STEPS * BATCH, 6, 6, 1)).astype("float32"),
            rng.integers(0, 5, size=(STEPS * BATCH,)).astype("int32"))


def _batches():
    x, y = _data()
    return [(tf.constant(x[i:i + BATCH]), tf.constant(y[i:i + BATCH]))
            for i in range(0, len(x), BATCH)]


def _layers():
    return [keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(16, activation="tanh", name="d1"),
            keras.layers.Dense(5, name="d2")]


def _functional():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = inputs
    for layer in _layers():
        x = layer(x)
    return keras.Model(inputs, x, name="tiny")


class Net(keras.Model):
    """A subclassed model whose prunable layers are wrapped by hand."""

    def __init__(self):
        super().__init__(name="net")
        conv, self.flatten, d1, d2 = _layers()
        self.conv = tfl.MaskedLayer(conv)
        self.d1 = tfl.MaskedLayer(d1)
        self.d2 = tfl.MaskedLayer(d2)

    def call(self, x, training=None):
        return self.d2(self.d1(self.flatten(self.conv(x))))


class OwnStep(keras.Model):
    """A model with its own train_step (it calls self.optimizer.apply_gradients)."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compiled_loss(y, self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def _method(name):
    if name == "rigl":
        return tfl.RigL(delta_t=3, end_step=STEPS, alpha=0.5, seed=2)
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=STEPS,
                                                    frequency=3)
    return tfl.GradualMagnitudePruning(schedule, seed=2)


def _sparsity(name):
    return 0.7 if name == "rigl" else 0.0


def _fit_reference(name):
    model = tfl.sparsify(_functional(), _sparsity(name), "erk", seed=1)
    initial = tfl.get_masks(model)
    model.compile(_sgd(), _loss())
    method = _method(name)
    model.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=[method])
    return initial, tfl.get_masks(model), method


def _custom_loop(model, opt, use_function, check_zeros=True):
    loss_fn = _loss()

    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(step) if use_function else step
    for x, y in _batches():
        step(x, y)
        if check_zeros:  # no dense gradient ever reaches a masked weight
            weights = tfl.get_weights(model)
            for key, mask in tfl.get_masks(model).items():
                assert not np.any(weights[key][mask == 0]), key


def _assert_same_masks(got, want, initial):
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert any(not np.array_equal(want[k], initial[k]) for k in want)  # masks moved


@pytest.mark.parametrize("name", ["rigl", "gmp"])
def test_same_masks_in_every_loop(name):
    initial, want, fitted = _fit_reference(name)
    assert len(fitted.history) == 4

    # (b) custom loop with tf.GradientTape, traced
    model = tfl.sparsify(_functional(), _sparsity(name), "erk", seed=1)
    opt = tfl.SparseOptimizer(_sgd(), model, _method(name))
    _custom_loop(model, opt, use_function=True)
    _assert_same_masks(tfl.get_masks(model), want, initial)
    assert opt.last_update()["step"] == STEPS
    assert opt.method.dense_gradient_steps == (4 if name == "rigl" else 0)
    assert opt.method.dense_gradient_steps == fitted.dense_gradient_steps

    # (c) a model with its own train_step, compiled with the wrapper
    sparse = tfl.sparsify(_functional(), _sparsity(name), "erk", seed=1)
    own = OwnStep(sparse.inputs, sparse.outputs)
    own.compile(tfl.SparseOptimizer(_sgd(), own, _method(name)), _loss())
    own.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    _assert_same_masks(tfl.get_masks(own), want, initial)

    # (d) a subclassed model with MaskedLayers, masks drawn in place, eager loop
    net = Net()
    net(tf.zeros((1, 6, 6, 1)))
    reference = _functional()
    for layer in (net.conv, net.d1, net.d2):
        layer.layer.set_weights(reference.get_layer(layer.layer.name).get_weights())
    assert tfl.sparsify(net, _sparsity(name), "erk", seed=1) is net
    drawn = tfl.get_masks(net)  # the same random masks as the functional model's
    assert sorted(drawn) == sorted(initial)
    for key in initial:
        np.testing.assert_array_equal(drawn[key], initial[key])
    opt = tfl.SparseOptimizer(_sgd(), net, _method(name))
    _custom_loop(net, opt, use_function=False, check_zeros=False)
    _assert_same_masks(tfl.get_masks(net), want, initial)


@pytest.mark.parametrize("method", [tfl.SET, tfl.SNFS])
def test_set_and_snfs_custom_loop_match_fit(method):
    masks = []
    for through_fit in (True, False):
        model = tfl.sparsify(_functional(), 0.7, "erk", seed=1)
        rule = method(delta_t=4, end_step=STEPS, alpha=0.5, seed=3)
        if through_fit:
            model.compile(_sgd(), _loss())
            model.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
                      callbacks=[rule])
        else:
            _custom_loop(model, tfl.SparseOptimizer(_sgd(), model, rule), use_function=True,
                         check_zeros=False)
        masks.append(tfl.get_masks(model))
        # SNFS keeps a momentum of the dense gradient: dense at every step; SET never
        assert rule.dense_gradient_steps == (STEPS if method is tfl.SNFS else 0)
    _assert_same_masks(masks[1], masks[0], tfl.get_masks(
        tfl.sparsify(_functional(), 0.7, "erk", seed=1)))


def test_static_sparse_wrapper_keeps_the_masks():
    model = tfl.sparsify(_functional(), 0.7, "erk", seed=1)
    masks = tfl.get_masks(model)
    opt = tfl.SparseOptimizer(_sgd(), model, tfl.StaticSparse())
    _custom_loop(model, opt, use_function=True)
    for key, mask in tfl.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[key])
    assert opt.last_update() is None and int(opt.iterations.numpy()) == STEPS


def test_adam_slots_reset_and_checkpoint_in_a_custom_loop(tmp_path):
    model = tfl.sparsify(_functional(), 0.7, "erk", seed=1)
    weights = len(model.get_weights())
    inner = keras.optimizers.Adam(0.01)
    method = tfl.RigL(delta_t=STEPS, end_step=STEPS, alpha=0.5, decay="constant")
    opt = tfl.SparseOptimizer(inner, model, method)
    assert len(model.get_weights()) == weights  # the gradient gate is not a model weight
    before = tfl.get_masks(model)
    _custom_loop(model, opt, use_function=True, check_zeros=False)
    after = tfl.get_masks(model)
    slots = tfl.dst.optimizer_slots(inner, [w for layer in tfl.masked_layers(model)
                                            for w, _ in layer.masked_weights])
    changed = 0
    for layer in tfl.masked_layers(model):
        for name, (weight, _) in zip(layer.weight_names, layer.masked_weights):
            key = f"{layer.layer.name}/{name}"
            moved = before[key] != after[key]
            changed += int(moved.sum())
            for slot in slots[id(weight)][0]:
                assert np.all(slot.numpy()[moved] == 0)
                assert np.all(slot.numpy()[after[key] == 0] == 0)
    assert changed > 0
    assert int(opt.iterations.numpy()) == STEPS
    assert opt.method.dense_gradient_steps == 1  # the one update step
    gate = opt.method.engine.gate
    assert not bool(gate.numpy())  # no update after step 12
    opt.iterations.assign(STEPS - 1)  # as a restored checkpoint would
    opt.refresh_gate()
    assert bool(gate.numpy())  # the next step (12) updates: dense gradient
    opt.iterations.assign(STEPS)
    opt.refresh_gate()
    # a checkpoint holds the wrapped optimizer's variables: a plain Adam restores it
    path = tf.train.Checkpoint(optimizer=opt, model=model).save(str(tmp_path / "ckpt"))
    model2 = tfl.sparsify(_functional(), 0.7, "erk", seed=1)
    plain = keras.optimizers.Adam(0.01)
    plain.build(model2.trainable_variables)
    status = tf.train.Checkpoint(optimizer=plain, model=model2).restore(path)
    status.assert_existing_objects_matched().expect_partial()  # (the gate is extra)
    assert int(plain.iterations.numpy()) == STEPS
    for a, b in zip(plain.variables, inner.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # the gate is in the object graph: a SavedModel of the live model can be written
    model.save(str(tmp_path / "saved"), save_format="tf", include_optimizer=False)
    loaded = keras.models.load_model(str(tmp_path / "saved"), compile=False)
    x = _batches()[0][0]
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


def test_errors_point_to_the_fix():
    sparse = tfl.sparsify(_functional(), 0.7, "erk", seed=1)
    with pytest.raises(ValueError, match="end_step"):
        tfl.SparseOptimizer(_sgd(), sparse, tfl.RigL())  # no fit: the length is unknown
    with pytest.raises(TypeError, match="method must be"):
        tfl.SparseOptimizer(_sgd(), sparse, "rigl")
    own = OwnStep(sparse.inputs, sparse.outputs)
    own.compile(_sgd(), _loss())
    with pytest.raises(ValueError, match="SparseOptimizer"):
        own.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, callbacks=[tfl.RigL()])
    with pytest.raises(TypeError, match="not wrapped"):
        class Sub(keras.Model):
            def __init__(self):
                super().__init__()
                self.fc = keras.layers.Dense(3)

            def call(self, x):
                return self.fc(x)

        sub = Sub()
        sub(tf.zeros((1, 4)))
        tfl.sparsify(sub, 0.5)
    own.compile(tfl.SparseOptimizer(_sgd(), own, tfl.RigL(end_step=10)), _loss())
    with pytest.raises(ValueError, match="already updates the masks; drop the callback"):
        own.fit(*_data(), batch_size=BATCH, epochs=1, verbose=0, callbacks=[tfl.SET()])
    method = tfl.RigL(end_step=10)
    tfl.SparseOptimizer(_sgd(), sparse, method)
    with pytest.raises(ValueError, match="one method object per"):
        tfl.SparseOptimizer(_sgd(), sparse, method)
