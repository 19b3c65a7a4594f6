"""Keras 3 suite: lottery tickets (IMP with rewinding, controls, resume), set_masks inside
``fit`` and the binary's Keras/backend flags, on the backend of this process (run by
tests/test_keras3.py once per backend, each in its own process)."""
import os

import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.lottery import IterativeMagnitudePruning, RewindCheckpoint, results
from tf_lottery.masking.selection import count_zeros

BACKEND = keras.config.backend()
L = keras.layers
SIZES = {"fc/kernel": 64 * 24, "fc2/kernel": 24 * 12, "out/kernel": 12 * 10}


def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v.value if hasattr(v, "value") else v))


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:240], y[:240].astype("int32")), (x[240:360], y[240:360].astype("int32"))


def mlp():
    inp = keras.Input((64,))
    h = L.Dense(24, activation="relu", name="fc")(inp)
    h = L.Dense(12, activation="relu", name="fc2")(h)
    return keras.Model(inp, L.Dense(10, name="out")(h))


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def run(data, tmp_path, name="run", **kw):
    kw.setdefault("epochs", 1)
    kw.setdefault("levels", 3)
    kw.setdefault("batch_size", 40)
    kw.setdefault("verbose", 0)
    imp = IterativeMagnitudePruning(mlp, data[0], data[1], sgd, output_dir=str(tmp_path / name),
                                    **kw)
    return imp, imp.run()


def level_masks(folder, level):
    return results.read_arrays(os.path.join(folder, f"level_{level}", "masks.npz"))


def test_imp_exact_counts_zeros_rewind_and_controls(data, tmp_path):
    """Level 0 and one pruning level, rewinding to iteration 2, both controls: counts are
    exact, pruned weights are 0, every kind restarts its kept weights at its start value."""
    starts = []
    original = IterativeMagnitudePruning._train

    def spy(self, model, start, level, kind, *args, **kwargs):
        starts.append((level, kind, start, tfl.get_weights(model), tfl.get_masks(model)))
        return original(self, model, start, level, kind, *args, **kwargs)

    IterativeMagnitudePruning._train = spy
    try:
        imp, rows = run(data, tmp_path, levels=2, fraction=0.2, output_fraction=0.1,
                        rewind_step="2it", controls=("reinit", "random_mask"))
    finally:
        IterativeMagnitudePruning._train = original
    assert [(r["level"], r["kind"]) for r in rows] == [
        (0, "ticket"), (1, "ticket"), (1, "reinit"), (1, "random_mask")]
    previous = {k: np.ones(n) for k, n in SIZES.items()}
    for level in range(2):
        masks = level_masks(imp.output_dir, level)
        assert list(masks) == list(SIZES)
        for key, mask in masks.items():
            alive = int(previous[key].sum())
            f = 0.0 if level == 0 else (0.1 if key == "out/kernel" else 0.2)
            assert int(mask.sum()) == alive - count_zeros(alive, f), (level, key)
            assert np.all(mask.ravel() <= previous[key].ravel())
        previous = masks
    # the trained ticket holds exact zeros where pruned (the saved weights, reloaded)
    model = tfl.sparsify(mlp(), 0.0)
    results.load_weights(model, os.path.join(imp.output_dir, "level_1", "weights.h5"))
    for layer in tfl.masked_layers(model):
        for (weight, mask) in layer.masked_weights:
            assert not np.any(_np(weight)[_np(mask) == 0])
    # theta_k: the rewind point written at level 0 is what tickets and random masks start from
    theta_k = results.read_arrays(os.path.join(imp.output_dir, "rewind_point.npz"))
    kernels = {k: v for k, v in sorted(theta_k.items()) if k.endswith("kernel")}
    assert len(kernels) == 3
    for level, kind, start, weights, masks in starts[1:]:
        assert start == 2
        for (key, w), theta in zip(weights.items(), kernels.values()):
            on = masks[key] == 1
            if kind == "reinit":
                assert not np.any(w[on] == theta[on])  # a fresh draw
                assert np.all(w[on] != 0)
            else:
                np.testing.assert_array_equal(w[on], theta[on])
            assert not np.any(w[~on])
    ticket = level_masks(imp.output_dir, 1)
    reinit = tfl.get_masks(imp._control_models["reinit"][0])
    random = tfl.get_masks(imp._control_models["random_mask"][0])
    for key in SIZES:  # the ticket's masks; the ticket's counts at random positions
        np.testing.assert_array_equal(reinit[key], ticket[key])
        assert int(random[key].sum()) == int(ticket[key].sum())
        assert not np.array_equal(random[key], ticket[key])
    assert all(0 < r["test_accuracy"] <= 1 for r in rows)


def test_resume_skips_finished_levels(data, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if fits:  # level 1
                raise KeyboardInterrupt

    fits = []

    class Count(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            fits.append(1)

    kw = dict(levels=2, rewind_step="2it")
    with pytest.raises(KeyboardInterrupt):
        run(data, tmp_path, callbacks=[Interrupt(), Count()], **kw)
    folder = str(tmp_path / "run")
    assert os.path.exists(os.path.join(folder, "level_0", "metrics.json"))
    assert not os.path.exists(os.path.join(folder, "level_1", "metrics.json"))
    saved = {n: open(os.path.join(folder, "level_0", n), "rb").read()
             for n in ("masks.npz", "weights.h5", "metrics.json")}
    _, rows = run(data, tmp_path, callbacks=[Count()], **kw)
    assert len(fits) == 2  # level 0, then (after the interrupted start) level 1 again
    assert [(r["level"], r["kind"]) for r in rows] == [(0, "ticket"), (1, "ticket")]
    for name, content in saved.items():
        assert open(os.path.join(folder, "level_0", name), "rb").read() == content, name
    masks = level_masks(folder, 1)
    assert int(masks["fc/kernel"].sum()) == 64 * 24 - count_zeros(64 * 24, 0.2)
    run(data, tmp_path, callbacks=[Count()], **kw)
    assert len(fits) == 2  # a finished run trains nothing


def _adam_model_and_data():
    """The MLP at 50% uniform sparsity compiled with Adam, and 80 examples."""
    model = tfl.sparsify(mlp(), 0.5, distribution="uniform", seed=0)
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((80, 64)).astype("float32")
    return model, x, np.arange(80) % 10


def test_rewind_restores_theta_k_and_resets_the_optimizer():
    keras.utils.set_random_seed(1)
    model, x, y = _adam_model_and_data()
    checkpoint = RewindCheckpoint("3it")
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[checkpoint])
    assert checkpoint.iteration == 3
    masks = tfl.get_masks(model)
    new = {k: m * (np.arange(m.size).reshape(m.shape) % 3 != 0) for k, m in masks.items()}
    tfl.set_masks(model, new)
    checkpoint.rewind(optimizer=model.optimizer)
    kernels = [v for k, v in sorted(checkpoint.values.items()) if k.endswith("kernel")]
    for (key, w), theta in zip(tfl.get_weights(model).items(), kernels):
        np.testing.assert_array_equal(w, theta * new[key])
        exact_zeros = int(np.sum((theta == 0) & (new[key] == 1)))
        assert np.count_nonzero(w) == int(new[key].sum()) - exact_zeros
    assert int(_np(model.optimizer.iterations)) == 3
    slots = [v for v in model.optimizer.variables if len(v.shape) > 0]
    assert slots and all(not np.any(_np(v)) for v in slots)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    for key, w in tfl.get_weights(model).items():
        assert not np.any(w[new[key] == 0])


def test_set_masks_inside_fit_takes_effect_at_the_next_step():
    """A callback changes the masks in the middle of ``fit`` (JAX: the training loop reads
    the mask variables back at the next step); training goes on under the new masks:
    entries turned off stay 0, entries turned on train."""
    keras.utils.set_random_seed(2)
    model, x, y = _adam_model_and_data()
    rng = np.random.default_rng(3)
    new, turned_on = {}, {}
    for key, m in tfl.get_masks(model).items():  # 20% of the on entries off, as many on
        on, off = np.flatnonzero(m), np.flatnonzero(m == 0)
        n = len(on) // 5
        flat = m.ravel().copy()
        flat[rng.choice(on, n, replace=False)] = 0
        flat[grown := rng.choice(off, n, replace=False)] = 1
        new[key] = flat.reshape(m.shape)
        turned_on[key] = np.isin(np.arange(m.size), grown).reshape(m.shape)
    seen = {}

    class Change(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2 and not seen:  # the 3rd step of epoch 1
                tfl.set_masks(self.model, new)
                seen.update(tfl.get_weights(self.model))

    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[Change()])
    assert int(_np(model.optimizer.iterations)) == 16
    masks = tfl.get_masks(model)
    for key, w in tfl.get_weights(model).items():
        np.testing.assert_array_equal(masks[key], new[key])
        assert not np.any(w[new[key] == 0])
        assert not np.any(seen[key][turned_on[key]])  # grown entries start at 0 ...
        # ... and train (a step still using the old masks would keep every one at 0; a
        # few sit on ReLU units that are dead for this data)
        assert np.count_nonzero(w[turned_on[key]]) > 0.5 * turned_on[key].sum(), key


def test_binary_flags_in_process(tmp_path, capsys):
    """``tf-lottery train --keras=3 --backend=<this backend>`` runs the digits main job as a
    2-iteration smoke run on a Keras 3 LeNet; another backend than the one loaded is a
    one-line error with the fix."""
    from tf_lottery import cli
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    gin_file = os.path.join(root, "gin_configs", "digits_lenet300100_imp.gin")
    argv = ["tf-lottery train", f"--gin_file={gin_file}", "--gin_param=train.max_steps = 2",
            "--gin_param=IterativeMagnitudePruning.controls = ()",
            f"--output_dir={tmp_path / 'run'}", "--keras=3", f"--backend={BACKEND}"]
    try:
        with pytest.raises(SystemExit) as done:
            cli.run("train", argv)
        assert done.value.code in (0, None)
        out = capsys.readouterr().out
        assert "tf-lottery result:" in out
        config = results.read_json(str(tmp_path / "run" / "run.json"))
        assert "keras = 3" in config["gin"] or "keras=3" in config["gin"].replace(" ", "")
        model_json = open(str(tmp_path / "run" / "model.json")).read()
        assert '"module": "tf_lottery' in model_json or "MaskedLayer" in model_json
        other = "jax" if BACKEND == "tensorflow" else "tensorflow"
        cli.forget_train_flags()
        with pytest.raises(SystemExit) as failed:
            cli.run("train", argv[:-1] + [f"--backend={other}", f"--output_dir={tmp_path / 'x'}"])
        assert failed.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"KERAS_BACKEND={other}" in err[0] and BACKEND in err[0], err
        assert not os.path.exists(str(tmp_path / "x"))
    finally:
        cli.forget_train_flags()
