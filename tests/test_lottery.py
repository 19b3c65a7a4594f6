"""IMP runner, rewinding and run folders on a tiny MLP over a slice of digits."""
import csv
import json
import os

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras
from tf_lottery.lottery import IterativeMagnitudePruning, RewindCheckpoint, rewind, results
from tf_lottery.lottery.rewind import parse_step, reset_optimizer, snapshot
from tf_lottery.masking.selection import count_zeros


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:240], y[:240]), (x[240:360], y[240:360])


def mlp(batchnorm=False):
    inp = keras.Input((64,))
    h = keras.layers.Dense(24, activation="relu", name="fc")(inp)
    if batchnorm:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(12, activation="relu", name="fc2")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def run(data, tmp_path=None, name="run", **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("levels", 3)
    kw.setdefault("batch_size", 40)
    kw.setdefault("verbose", 0)
    out = None if tmp_path is None else str(tmp_path / name)
    imp = IterativeMagnitudePruning(mlp, data[0], data[1], sgd, output_dir=out, **kw)
    return imp, imp.run()


def level_masks(folder, level):
    return list(results.read_arrays(os.path.join(folder, f"level_{level}", "masks.npz")).values())


def test_parse_step():
    assert parse_step(0) == 0
    assert parse_step(7) == 7
    assert parse_step("500it") == 500
    assert parse_step("2ep", steps_per_epoch=30) == 60
    for bad in ("2 epochs", "-1it", -3, "1.5ep"):
        with pytest.raises(ValueError):
            parse_step(bad, steps_per_epoch=10)
    with pytest.raises(ValueError, match="steps per epoch"):
        parse_step("2ep")


def test_layerwise_levels_prune_exact_fractions_and_masks_only_shrink(data, tmp_path):
    imp, rows = run(data, tmp_path, levels=4, fraction=0.2, output_fraction=0.1)
    folder = imp.output_dir
    previous = [np.ones((64, 24)), np.ones((24, 12)), np.ones((12, 10))]
    for level in range(4):
        masks = level_masks(folder, level)
        for i, (old, new) in enumerate(zip(previous, masks)):
            assert np.all(new <= old), "a pruned weight came back"
            alive = int(old.sum())
            f = 0.0 if level == 0 else (0.1 if i == 2 else 0.2)
            assert int(new.sum()) == alive - count_zeros(alive, f)
        previous = masks
    tickets = [r for r in rows if r["kind"] == "ticket"]
    total = 64 * 24 + 24 * 12 + 12 * 10
    assert [r["level"] for r in tickets] == [0, 1, 2, 3]
    assert tickets[3]["remaining"] == pytest.approx(sum(m.sum() for m in previous) / total)


def test_global_scope_pools_layers_and_differs_from_layerwise(data, tmp_path):
    g, _ = run(data, tmp_path, "global", levels=2, scope="global", fraction=0.5)
    lw, _ = run(data, tmp_path, "layerwise", levels=2, scope="layerwise", fraction=0.5)
    gm, lm = level_masks(g.output_dir, 1), level_masks(lw.output_dir, 1)
    sizes = [m.size for m in gm]
    assert sum(int(m.sum()) for m in gm) == sum(sizes) - count_zeros(sum(sizes), 0.5)
    assert [int(m.sum()) for m in lm] == [s - count_zeros(s, 0.5) for s in sizes]
    assert [int(m.sum()) for m in gm] != [int(m.sum()) for m in lm]
    model = tfl.sparsify(mlp(), 0.0)
    model.load_weights(os.path.join(g.output_dir, "level_0", "weights.h5"))
    weights = [np.abs(w) for w in tfl.get_weights(model).values()]
    threshold = np.sort(np.concatenate([w.ravel() for w in weights]))[::-1][int(sum(m.sum() for m in gm)) - 1]
    for w, m in zip(weights, gm):
        assert np.all(w[m == 1] >= threshold) and np.all(w[m == 0] <= threshold)


def test_rewind_checkpoint_restores_snapshot_bit_for_bit_under_mask():
    keras.utils.set_random_seed(1)
    model = tfl.sparsify(mlp(batchnorm=True), 0.5, distribution="uniform", seed=0)
    model.compile(sgd(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((80, 64)).astype("float32")
    y = np.arange(80) % 10
    checkpoint = RewindCheckpoint("3it")
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[checkpoint])
    assert checkpoint.iteration == 3
    moving_mean = model.get_layer("bn").moving_mean.numpy().copy()
    masks = tfl.get_masks(model)
    new_masks = {k: m * (np.arange(m.size).reshape(m.shape) % 3 != 0) for k, m in masks.items()}
    tfl.set_masks(model, new_masks)
    checkpoint.rewind(optimizer=model.optimizer)
    mask_ids = {id(m) for layer in tfl.masked_layers(model) for _, m in layer.masked_weights}
    mask_of = {id(w): m for layer in tfl.masked_layers(model)
               for (w, _), m in zip(layer.masked_weights, layer.get_masks())}
    state = [v for v in model.weights if id(v) not in mask_ids]
    assert len(state) == len(checkpoint.values)
    for variable, (_, value) in zip(state, sorted(checkpoint.values.items())):
        expected = value * mask_of[id(variable)] if id(variable) in mask_of else value
        np.testing.assert_array_equal(variable.numpy(), expected)
    assert not np.array_equal(moving_mean, model.get_layer("bn").moving_mean.numpy())
    assert int(model.optimizer.iterations.numpy()) == 3
    assert all(not np.any(v.numpy()) for v in model.optimizer.variables()[1:])
    for k, m in tfl.get_masks(model).items():
        np.testing.assert_array_equal(m, new_masks[k])


def test_rewind_errors():
    model = tfl.sparsify(mlp(), 0.0)
    values = snapshot(model)
    other = tfl.sparsify(mlp(batchnorm=True), 0.0)
    with pytest.raises(ValueError, match="different architecture"):
        rewind(other, values)
    with pytest.raises(ValueError, match="no snapshot"):
        RewindCheckpoint(5).rewind(model)
    optimizer = sgd()
    reset_optimizer(optimizer, 7)
    assert int(optimizer.iterations.numpy()) == 7


def test_resume_after_interrupted_level_reproduces_uninterrupted_run(data, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        calls = 0

        def on_train_begin(self, logs=None):
            Interrupt.calls += 1
            if Interrupt.calls == 4:
                raise KeyboardInterrupt

    kw = dict(levels=3, controls=("reinit",), rewind_step="2it")
    full, full_rows = run(data, tmp_path, "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path, "resumed", callbacks=[Interrupt()], **kw)
    folder = str(tmp_path / "resumed")
    assert os.path.exists(os.path.join(folder, "level_1", "metrics.json"))
    assert not os.path.exists(os.path.join(folder, "level_2", "metrics.json"))
    assert not any(n.startswith(".tmp") for _, _, files in os.walk(folder) for n in files)
    _, rows = run(data, tmp_path, "resumed", **kw)
    assert [(r["level"], r["kind"], r["test_accuracy"], r["test_loss"]) for r in rows] == \
        [(r["level"], r["kind"], r["test_accuracy"], r["test_loss"]) for r in full_rows]
    for level in range(3):
        for a, b in zip(level_masks(full.output_dir, level), level_masks(folder, level)):
            np.testing.assert_array_equal(a, b)
    again, rows_again = run(data, tmp_path, "resumed", **kw)
    assert [r["test_loss"] for r in rows_again] == [r["test_loss"] for r in rows]


def test_refuses_to_clobber_a_different_run(data, tmp_path):
    run(data, tmp_path, "x", levels=2)
    with pytest.raises(ValueError, match="different run.*fraction"):
        run(data, tmp_path, "x", levels=2, fraction=0.5)
    assert results.read_json(str(tmp_path / "x" / "run.json"))["fraction"] == 0.2
    _, rows = run(data, tmp_path, "x", levels=2, fraction=0.5, overwrite=True)
    assert rows[1]["remaining"] < 0.6
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a tf-lottery run folder"):
        run(data, tmp_path, "other", levels=1)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_results_files_a_person_can_read(data, tmp_path):
    (x, y), test = data
    imp, rows = run(((x[:200], y[:200]), test), tmp_path, controls=("reinit", "random_mask"),
                    validation_data=(x[200:], y[200:]), eval_every=2)
    folder = imp.output_dir
    summary = results.read_json(os.path.join(folder, "summary.json"))
    kinds = [(r["level"], r["kind"]) for r in summary["rows"]]
    assert kinds == [(0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_mask"),
                     (2, "ticket"), (2, "reinit"), (2, "random_mask")]
    for row in summary["rows"]:
        assert 0.0 < row["remaining"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
        assert row["early_stop_iteration"] in (2, 4, 5)  # every 2 iterations and the last
        assert 0.0 <= row["early_stop_test_accuracy"] <= 1.0
    with open(os.path.join(folder, "summary.csv")) as f:
        table = list(csv.DictReader(f))
    assert [(int(r["level"]), r["kind"]) for r in table] == kinds
    assert {"level", "kind", "remaining", "test_accuracy"} <= set(table[0])
    metrics = json.load(open(os.path.join(folder, "level_2", "metrics.json")))
    assert set(metrics["layer_remaining"]) == {"fc/kernel", "fc2/kernel", "out/kernel"}
    assert {"overhead_seconds", "train_seconds", "kinds"} <= set(metrics)
    with open(os.path.join(folder, "accuracy_vs_remaining.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(folder, "tensorboard"))


def test_controls_use_ticket_masks_and_counts(data, tmp_path):
    imp, _ = run(data, tmp_path, levels=2, controls=("reinit", "random_mask"))
    ticket = level_masks(imp.output_dir, 1)
    reinit_model, _ = imp._control_models["reinit"]
    random_model, _ = imp._control_models["random_mask"]
    for t, r, m in zip(ticket, tfl.get_masks(reinit_model).values(),
                       tfl.get_masks(random_model).values()):
        np.testing.assert_array_equal(t, r)
        assert int(m.sum()) == int(t.sum()) and not np.array_equal(m, t)


@pytest.mark.parametrize("mode,start", [("finetune", "end"), ("lr_rewind", "k")])
def test_baselines_keep_trained_weights(data, tmp_path, mode, start):
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen.append((int(self.model.optimizer.iterations.numpy()),
                         {k: v.copy() for k, v in tfl.get_weights(self.model).items()}))

        def on_train_end(self, logs=None):
            seen.append((None, {k: v.copy() for k, v in tfl.get_weights(self.model).items()}))

    imp, rows = run(data, tmp_path, mode, levels=2, mode=mode, rewind_step="1it",
                    callbacks=[Watch()])
    assert [r["kind"] for r in rows] == [mode, mode]
    _, trained = seen[1]
    iteration, started = seen[2]
    assert iteration == (imp.total if start == "end" else 1)
    masks = level_masks(imp.output_dir, 1)
    for (key, w), m in zip(started.items(), masks):
        np.testing.assert_array_equal(w, trained[key] * m)
    assert rows[1]["iterations"] == imp.total - imp.k


def test_bad_arguments(data):
    for kw, match in [({"mode": "magic"}, "unknown mode"), ({"controls": ("x",)}, "controls"),
                      ({"mode": "finetune", "controls": ("reinit",)}, "mode='ticket'"),
                      ({"scope": "local"}, "scope"), ({"fraction": 1.0}, "fraction"),
                      ({"rewind_step": "99ep"}, "not before the end"),
                      ({"layer_fractions": {"fc": 1.5}}, "fc")]:
        with pytest.raises(ValueError, match=match):
            IterativeMagnitudePruning(mlp, data[0], data[1], sgd, epochs=1, **kw)
    with pytest.raises(ValueError, match="not prunable layers"):
        run(data, layer_fractions={"nope": 0.1}, levels=2)


def test_reinit_control_differs_from_theta0_even_with_pinned_seed():
    from tf_lottery.lottery.imp import reinitialise
    from tf_lottery.training.models import lenet_300_100
    a = lenet_300_100(input_shape=(8, 8, 1), seed=3)
    b = lenet_300_100(input_shape=(8, 8, 1), seed=3)
    np.testing.assert_array_equal(a.get_layer("fc1").kernel.numpy(), b.get_layer("fc1").kernel.numpy())
    reinitialise(b, seed=11)
    ka, kb = a.get_layer("fc1").kernel.numpy(), b.get_layer("fc1").kernel.numpy()
    assert not np.any(ka == kb)
    assert abs(ka.std() - kb.std()) < 0.1 * ka.std()
    np.testing.assert_array_equal(b.get_layer("fc1").bias.numpy(), 0.0)


def test_controls_start_every_kept_weight_at_its_start_value(data, tmp_path):
    """A control's kept entries hold theta_k, never a 0 left by the previous level's mask."""
    starts = []
    original = IterativeMagnitudePruning._train

    def spy(self, model, start, level, kind, *args, **kwargs):
        if kind == "random_mask":
            weights, masks = tfl.get_weights(model), tfl.get_masks(model)
            starts.append(sum(int(np.count_nonzero((masks[k] == 1) & (weights[k] == 0)))
                              for k in masks))
        return original(self, model, start, level, kind, *args, **kwargs)

    IterativeMagnitudePruning._train = spy
    try:
        run(data, tmp_path, levels=3, controls=("random_mask",))
    finally:
        IterativeMagnitudePruning._train = original
    assert starts == [0, 0]  # levels 1 and 2
