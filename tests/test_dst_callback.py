"""The dynamic sparse training callbacks end to end on tiny tf_keras models: constant
counts, zero-initialised growth with reset optimizer slots, RigL's gradient criterion,
schedules, gradual magnitude pruning, logging, errors."""
import glob
import os

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf, tfmot
from tf_lottery.dst import (SET, SNFS, GradualMagnitudePruning, RigL, StaticSparse,
                            optimizer_slots)
from tf_lottery.plots import plot_layer_sparsity
from dst_tiny import BATCH, _data, _sparse, _tiny

def _masked_weights(model):
    return {f"{layer.layer.name}/{name}": (w, m) for layer in tfl.masked_layers(model)
            for name, (w, m) in zip(layer.weight_names, layer.masked_weights)}


class Recorder(keras.callbacks.Callback):
    """Masks before and after every step; weights and optimizer slots after."""

    def __init__(self, slots=True):
        super().__init__()
        self.slots = slots
        self.before, self.after, self.weights, self.slot_values = [], [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.before.append(tfl.get_masks(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self.after.append(tfl.get_masks(self.model))
        self.weights.append(tfl.get_weights(self.model))
        if self.slots:
            pairs = _masked_weights(self.model)
            found = optimizer_slots(self.model.optimizer, [w for w, _ in pairs.values()])
            self.slot_values.append({k: [s.numpy() for s in found[id(w)][0]]
                                     for k, (w, _) in pairs.items()})


@pytest.mark.parametrize("method", [RigL, SET, SNFS])
def test_counts_stay_exactly_constant(method):
    steps = 30
    model = _sparse()
    initial = {k: int(v.sum()) for k, v in tfl.get_masks(model).items()}
    recorder = Recorder(slots=False)
    callback = method(delta_t=1, end_step=steps, alpha=0.5, decay="constant")
    model.fit(*_data(steps), batch_size=BATCH, epochs=1, verbose=0,
              callbacks=[callback, recorder])
    assert len(callback.history) == steps
    changed = 0
    for before, after, weights in zip(recorder.before, recorder.after, recorder.weights):
        assert {k: int(v.sum()) for k, v in after.items()} == initial
        changed += sum(int((before[k] != after[k]).sum()) for k in after)
        for key, mask in after.items():  # the invariant: masked entries are exactly 0
            assert not np.any(weights[key][mask == 0])
    assert changed > steps  # the masks really moved
    for record in callback.history:
        assert record["active"] == initial
        assert record["grown"] == record["dropped"]
    assert callback.update_traces == 1  # one trace for all 30 updates
    assert callback.dense_gradient_steps == (0 if method is SET else steps)


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adam(0.01),
    lambda: keras.optimizers.legacy.SGD(0.05, momentum=0.9),
], ids=["sgd_momentum", "adam", "legacy_sgd"])
def test_grown_weights_and_slots_start_at_zero(optimizer):
    model = _sparse(optimizer())
    recorder = Recorder()
    callback = RigL(delta_t=4, end_step=12, alpha=0.5, decay="constant")
    model.fit(*_data(12), batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback, recorder])
    updates = 0
    for step, (before, after) in enumerate(zip(recorder.before, recorder.after), start=1):
        weights, slots = recorder.weights[step - 1], recorder.slot_values[step - 1]
        if step % 4:
            for key in after:
                np.testing.assert_array_equal(before[key], after[key])
            continue
        updates += 1
        for key in after:
            grown = (after[key] == 1) & (before[key] == 0)
            dropped = (after[key] == 0) & (before[key] == 1)
            kept = (after[key] == 1) & (before[key] == 1)
            if key != "conv/kernel":  # ERK keeps the small conv dense: nothing to grow
                assert grown.sum() > 0 and grown.sum() == dropped.sum()
            assert np.all(weights[key][grown] == 0) and np.all(weights[key][dropped] == 0)
            assert slots[key], "no optimizer slot found"
            for slot in slots[key]:
                assert np.all(slot[grown] == 0) and np.all(slot[dropped] == 0)
                assert np.any(slot[kept] != 0)  # the rest of the state is untouched
    assert updates == 3
    assert callback.dense_gradient_steps == 3  # only at the update steps


def test_rigl_grows_where_the_dense_gradient_is_largest():
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(1, use_bias=False, name="w")(inputs)
    model = tfl.sparsify(keras.Model(inputs, outputs), 0.0)
    weight = np.array([0.9, -0.1, 0.5, 0.0, -0.05, 0.0, 0.0, 0.7], np.float32)
    mask = np.array([1, 1, 1, 0, 1, 0, 0, 1], np.float32)
    tfl.masked_layers(model)[0].layer.kernel.assign(weight[:, None])
    tfl.set_masks(model, {"w/kernel": mask[:, None]})
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: only the update moves weights
    x = np.array([[1.0, 0.5, 1.0, 3.0, 1.0, 8.0, 0.2, 1.0]], np.float32)
    y = np.array([[10.0]], np.float32)
    callback = RigL(delta_t=1, end_step=1, alpha=0.4, decay="constant")
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[callback])
    # |dL/d(w*m)| = 2 |pred - y| |x|: among the inactive and just-dropped entries, x is
    # largest at 5 (8.0) and 3 (3.0). n_drop = floor(5 * 0.4) = 2 smallest |w|: 4 and 1.
    new_mask = tfl.get_masks(model)["w/kernel"][:, 0]
    np.testing.assert_array_equal(new_mask, [1, 0, 1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(tfl.get_weights(model)["w/kernel"][:, 0],
                                  np.float32([0.9, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.7]))
    assert callback.history[0]["grown"] == {"w/kernel": 2}


def test_snfs_without_momentum_matches_rigl():
    results = []
    methods = (RigL(delta_t=3, end_step=9, seed=1),
               SNFS(delta_t=3, end_step=9, seed=1, momentum=0.0))
    for method in methods:
        model = _sparse()
        model.fit(*_data(9), batch_size=BATCH, epochs=1, verbose=0, callbacks=[method],
                  shuffle=False)
        results.append((tfl.get_masks(model), tfl.get_weights(model)))
    for key in results[0][0]:
        np.testing.assert_array_equal(results[0][0][key], results[1][0][key])
        np.testing.assert_allclose(results[0][1][key], results[1][1][key], atol=1e-6)
    assert any(not np.array_equal(results[0][0][k], tfl.get_masks(_sparse())[k])
               for k in results[0][0])
    assert [m.dense_gradient_steps for m in methods] == [3, 9]


def test_schedule_and_default_end_step():
    model = _sparse()
    callback = RigL(delta_t=2)  # end_step: 75% of 2 epochs x 8 steps = 12
    model.fit(*_data(8), batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])
    assert [r["step"] for r in callback.history] == [2, 4, 6, 8, 10, 12]
    for record in callback.history:
        expected = 0.15 * (1 + np.cos(np.pi * record["step"] / 12))
        assert record["drop_fraction"] == pytest.approx(expected, rel=1e-5)
    assert sum(callback.history[-1]["grown"].values()) == 0  # f(end_step) = 0


def test_static_sparse_and_restored_train_step():
    model = _sparse()
    masks = tfl.get_masks(model)
    model.fit(*_data(6), batch_size=BATCH, epochs=1, verbose=0, callbacks=[StaticSparse()])
    for key, mask in tfl.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[key])
    rigl = RigL(delta_t=2, end_step=12, total_steps=24)  # steps 7-12 of 24: 3 updates
    model.fit(*_data(6), batch_size=BATCH, epochs=1, verbose=0, callbacks=[rigl])
    assert [r["step"] for r in rigl.history] == [8, 10, 12]
    assert "train_step" not in model.__dict__  # Keras' own step is back
    keras_own, _, installed = rigl._traced
    assert model.train_function is keras_own and keras_own is not installed
    after_rigl = tfl.get_masks(model)
    assert any(not np.array_equal(masks[k], after_rigl[k]) for k in masks)
    # a second fit with the same callback reuses the traced step: no trace per fit or update
    model.fit(*_data(6), batch_size=BATCH, epochs=1, verbose=0, callbacks=[rigl])
    assert rigl.update_traces == 1
    assert rigl.dense_gradient_steps == 3  # no update after end_step, no dense gradient


class _Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            raise RuntimeError("boom")


def test_recovers_after_a_failed_fit():
    model = _sparse()
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(*_data(6), batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[RigL(delta_t=1, end_step=20, total_steps=20), _Boom()])
    assert "train_step" in model.__dict__  # on_train_end never ran
    masks = tfl.get_masks(model)
    model.fit(*_data(4), batch_size=BATCH, epochs=1, verbose=0)  # Keras' own step again
    assert "train_step" not in model.__dict__
    for key, mask in tfl.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[key])
    with pytest.raises(ValueError, match="already active"):
        model.fit(*_data(4), batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[RigL(delta_t=2, end_step=10, total_steps=10),
                             SET(delta_t=2, end_step=10, total_steps=10)])
    callback = SET(delta_t=2, end_step=10, total_steps=10)
    model.fit(*_data(4), batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    assert [r["step"] for r in callback.history] == [8, 10]


def test_gradual_magnitude_pruning():
    model = tfl.sparsify(_tiny(), 0.0)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=10,
                                                    frequency=2)
    callback = GradualMagnitudePruning(schedule, dense_layers=["conv"])
    recorder = Recorder(slots=False)
    model.fit(*_data(12), batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback, recorder])
    for before, after in zip(recorder.before, recorder.after):
        for key in after:
            assert np.all(after[key] <= before[key])  # never grows
    masks = tfl.get_masks(model)
    assert masks["conv/kernel"].all()
    for key in ("d1/kernel", "d2/kernel"):
        assert int((masks[key] == 0).sum()) == int(np.floor(0.8 * masks[key].size + 0.5))
    steps = [r["step"] for r in callback.history]
    assert steps == [2, 4, 6, 8, 10]
    assert callback.history[-1]["target_sparsity"] == pytest.approx(0.8)
    targets = [r["target_sparsity"] for r in callback.history]
    assert targets == sorted(targets)


def _event_tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def test_tensorboard_scalars_and_sparsity_chart(tmp_path):
    model = _sparse()
    callback = RigL(delta_t=2, end_step=6, log_dir=str(tmp_path))
    model.fit(*_data(6), batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    tags = _event_tags(str(tmp_path / "dst"))
    for tag in ("dst/drop_fraction", "dst/connections_changed", "dst/sparsity/total",
                "dst/sparsity/d1/kernel", "dst/connections_changed/d1/kernel"):
        assert tag in tags
    png = tmp_path / "layer_sparsity.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_plot_layer_sparsity_inputs(tmp_path):
    model = _sparse()
    for name, source in (("report", tfl.sparsity_report(model)), ("masks", tfl.get_masks(model)),
                         ("model", model)):
        path = plot_layer_sparsity(source, str(tmp_path / f"{name}.png"))
        assert os.path.getsize(path) > 1000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_layer_sparsity({}, str(tmp_path / "empty.png"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="delta_t"):
        RigL(delta_t=0)
    with pytest.raises(TypeError, match="delta_t"):
        RigL(delta_t=2.5)
    with pytest.raises(ValueError, match="end_step"):
        SET(end_step=0)
    for alpha in (0.0, 1.5, -0.3):
        with pytest.raises(ValueError, match="alpha"):
            SNFS(alpha=alpha)
    with pytest.raises(ValueError, match="momentum"):
        SNFS(momentum=1.0)
    with pytest.raises(TypeError, match="PruningSchedule"):
        GradualMagnitudePruning(0.9)


def _fails_before_training(model, callback, match, x=None, steps=4, **fit_kwargs):
    weights = [w.copy() for w in model.get_weights()]
    x = _data(steps) if x is None else x
    with pytest.raises(ValueError, match=match):
        model.fit(*x, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback], **fit_kwargs)
    if model.optimizer is not None:
        assert int(model.optimizer.iterations.numpy()) == 0
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert "train_step" not in model.__dict__


def test_errors_before_training_starts():
    _fails_before_training(_sparse(), RigL(end_step=100), "beyond the end of training")
    plain = _tiny()
    plain.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _fails_before_training(plain, RigL(), "no MaskedLayer")
    _fails_before_training(_sparse(keras.optimizers.Adafactor()), RigL(),
                           "cannot be reset")
    _fails_before_training(
        _sparse(keras.mixed_precision.LossScaleOptimizer(keras.optimizers.SGD())), RigL(),
        "LossScaleOptimizer")
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 0, end_step=1000)
    _fails_before_training(_sparse(), GradualMagnitudePruning(schedule), "beyond the end")
    short = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 0, end_step=4)
    _fails_before_training(
        _sparse(), GradualMagnitudePruning(short, dense_layers=["nope"]), "not masked")

    class Custom(keras.Model):
        def train_step(self, data):
            return super().train_step(data)

    inputs = keras.Input((6, 6, 1))
    wrapped = Custom(inputs, tfl.MaskedLayer(keras.layers.Dense(5))(
        keras.layers.Flatten()(inputs)))
    wrapped.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    _fails_before_training(wrapped, RigL(), "overrides train_step")


def test_unknown_training_length_needs_end_step():
    model = _sparse()
    x, y = _data(4)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(BATCH)
    with pytest.raises(ValueError, match="unknown"):
        model.fit(dataset, epochs=1, verbose=0, callbacks=[RigL()])
    callback = RigL(delta_t=2, end_step=4)
    model.fit(dataset, epochs=1, verbose=0, callbacks=[callback])
    assert [r["step"] for r in callback.history] == [2, 4]
