"""Keras 3 dynamic sparse training (RigL, SET, SNFS, static) through fit, the callback and
the optimizer wrapper, run once per backend in its own process by tests/test_keras3.py:
counts kept, masked and grown entries (weights and optimizer slots) at zero, masks set or
weights written mid-training, step counts, custom loops, errors. The selection rules and
schedules are in suite_dst_rules.py. Tiny models, few steps."""
import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.keras3.dst import SparseOptimizer
from tf_lottery.masking import selection
from suite_core import BACKEND, _np, assert_masked_zero, data
from dst_helpers import Loop, active_counts, masked_state, sparse_mlp
from fit_scenarios import stale_steps_are_traced_again


# RigL through fit here; SET and SNFS run the same step in suite_dst_rules.py (custom loop,
# hand-built case): one fit trace per method would triple this file's time on JAX.
@pytest.mark.parametrize("method", ["rigl"])
def test_fit_keeps_counts_and_zeros(method):
    x, y = data(64)
    model = sparse_mlp()
    before = tfl.get_masks(model)
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer, "mse")
    cls = {"rigl": tfl.RigL, "set": tfl.SET, "snfs": tfl.SNFS}[method]
    callback = cls(delta_t=2, end_step=14, alpha=0.5)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert model.optimizer is optimizer  # the wrapper is gone after fit
    after = tfl.get_masks(model)
    assert active_counts(model) == {k: int(v.sum()) for k, v in before.items()}
    assert sum(int(np.sum(before[k] != after[k])) for k in before) > 0  # masks moved
    for key, (weight, slots) in masked_state(model, optimizer).items():
        off = after[key] == 0
        assert np.count_nonzero(weight[off]) == 0, key
        for slot in slots:
            assert np.count_nonzero(slot[off]) == 0, key
    assert [r["step"] for r in callback.history] == [2, 4, 6, 8, 10, 12, 14]  # every update
    for record in callback.history:
        assert record["grown"] == record["dropped"]
        assert record["active"] == active_counts(model)
    x2, y2 = data(16, seed=5)
    np.testing.assert_allclose(_np(model(x2)), _np(tfl.strip(model)(x2)), rtol=1e-5, atol=1e-6)


def test_fit_trains_as_the_in_step_conditional_does():
    """The callback's fit (on TensorFlow and JAX: the ordinary and the update step
    compiled apart and chosen on the host) and SparseOptimizer compiled directly (one step
    with the update under a conditional) give the same masks and weights, updates across
    epochs included; so does a custom loop (TensorFlow, JAX) with the two kinds of step."""
    x, y = data(48)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(type(self.model.train_function).__name__)

    results = []
    for route in ("callback", "compiled", "two_kinds"):
        if route == "two_kinds" and BACKEND == "torch":
            continue
        model = sparse_mlp()
        method = tfl.RigL(delta_t=3, end_step=10, alpha=0.5)
        sgd = keras.optimizers.SGD(0.05, momentum=0.9)
        if route == "callback":
            model.compile(sgd, "mse")
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                      callbacks=[method, Probe()])
            assert [r["step"] for r in method.history] == [3, 6, 9]  # every update
        elif route == "compiled":
            opt = tfl.SparseOptimizer(sgd, model, method)
            model.compile(opt, "mse")
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            assert opt.update_count == 3 and opt.last_update()["step"] == 9
        else:
            opt = tfl.SparseOptimizer(sgd, model, method)
            loop = Loop(model, opt, two_kinds=True)
            loop.run(x, y)
            loop.run(x, y)
            assert [opt.update_due(t) for t in range(1, 13)] == [t in (3, 6, 9)
                                                                    for t in range(1, 13)]
            assert opt.update_count == 3 and opt.last_update()["step"] == 9
        results.append((tfl.get_masks(model), tfl.get_weights(model)))
    if BACKEND in ("jax", "tensorflow"):
        assert set(seen) == {"_StepDispatch"}
    masks, weights = results[0]
    for other_masks, other_weights in results[1:]:
        for key in masks:
            np.testing.assert_array_equal(other_masks[key], masks[key], err_msg=key)
            np.testing.assert_allclose(other_weights[key], weights[key], rtol=1e-5,
                                       atol=1e-6, err_msg=key)


def test_set_masks_in_the_middle_of_sparse_training():
    """``tfl.set_masks`` from a callback while RigL's wrapper is live (between two updates,
    new masks of another density): training goes on from the new masks, so every weight
    keeps the new count through the later updates, and masked entries end at 0."""
    x, y = data(64)
    model = sparse_mlp()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(9)
    new = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in tfl.get_masks(model).items()}
    seen = {}

    class SetMasks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3 and not seen:
                tfl.set_masks(self.model, new)
                seen.update(active_counts(self.model))

    method = tfl.RigL(delta_t=2, end_step=14, alpha=0.5)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[method, SetMasks()])
    wanted = {k: int(v.sum()) for k, v in new.items()}
    assert seen == wanted
    assert active_counts(model) == wanted
    assert method.history[-1]["active"] == wanted
    for layer in tfl.masked_layers(model):
        for weight, mask in layer.masked_weights:
            assert np.count_nonzero(_np(weight)[_np(mask) == 0]) == 0, weight.path


def test_updates_follow_the_step_count_a_later_callback_restores():
    """A callback after RigL's that sets the step count when training begins (as
    ``BackupAndRestore`` does when it resumes): updates still come at multiples of
    delta_t of the restored count."""
    x, y = data(64)
    model = sparse_mlp()
    model.compile(keras.optimizers.SGD(0.05), "mse")

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.optimizer.iterations.assign(3)

    method = tfl.RigL(delta_t=2, end_step=20, alpha=0.5, total_steps=40, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[method, Resume()])
    assert int(_np(model.optimizer.iterations)) == 11
    assert [r["step"] for r in method.history] == [4, 6, 8, 10]
    assert method._keras3_optimizer.update_count == 4  # steps 4, 6, 8, 10


def test_updates_follow_a_step_count_changed_between_epochs():
    """A callback that moves the step count when the second epoch begins: the next
    updates come at multiples of delta_t of the new count (the fit's step dispatcher
    counts from the optimizer again after every epoch)."""
    x, y = data(64)
    model = sparse_mlp()
    model.compile(keras.optimizers.SGD(0.05), "mse")

    class Jump(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.iterations.assign(13)  # (odd: a stale count errs)

    method = tfl.RigL(delta_t=2, end_step=30, alpha=0.5, total_steps=40, verbose=0)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[method, Jump()])
    assert int(_np(model.optimizer.iterations)) == 21
    assert [r["step"] for r in method.history] == [2, 4, 6, 8, 14, 16, 18, 20]
    assert method._keras3_optimizer.update_count == 8  # 2, 4, 6, 8, then 14, 16, 18, 20


def test_grown_weights_and_adam_state_are_zero_at_the_update():
    x, y = data(48)
    model = sparse_mlp()
    optimizer = keras.optimizers.Adam(0.01)
    opt = tfl.SparseOptimizer(optimizer, model, tfl.RigL(delta_t=3, end_step=6, alpha=0.5))
    assert isinstance(opt, SparseOptimizer)
    loop = Loop(model, opt)
    loop.run(x[:16], y[:16])  # steps 1, 2
    old = tfl.get_masks(model)
    loop.run(x[16:24], y[16:24])  # step 3: an update
    new = tfl.get_masks(model)
    assert opt.last_update()["step"] == 3
    grown_total = 0
    for key, (weight, slots) in masked_state(model, optimizer).items():
        assert int(new[key].sum()) == int(old[key].sum())
        grown = (new[key] == 1) & (old[key] == 0)
        grown_total += int(grown.sum())
        assert opt.last_update()["grown"][key] == int(grown.sum())
        assert np.count_nonzero(weight[grown]) == 0, key
        assert np.count_nonzero(weight[new[key] == 0]) == 0, key
        assert len(slots) == 2  # Adam's m and v
        for slot in slots:
            assert np.count_nonzero(slot[grown]) == 0, key
            assert np.count_nonzero(slot[new[key] == 0]) == 0, key
    assert grown_total > 0


def test_static_sparse_keeps_masks():
    x, y = data(32)
    model = sparse_mlp()
    before = tfl.get_masks(model)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[tfl.StaticSparse()])
    after = tfl.get_masks(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    opt = tfl.SparseOptimizer(keras.optimizers.Adam(0.01), model, tfl.StaticSparse())
    Loop(model, opt).run(x, y)
    assert all(np.array_equal(before[k], v) for k, v in tfl.get_masks(model).items())


def _custom_tf_loop_gives_the_same_masks_as_fit():
    x, y = data(64)
    results = []
    for use_fit in (True, False):
        model = sparse_mlp()
        method = tfl.RigL(delta_t=2, end_step=6, alpha=0.5)
        if use_fit:
            model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                      callbacks=[method])
        else:
            opt = tfl.SparseOptimizer(keras.optimizers.SGD(0.05, momentum=0.9), model, method)
            Loop(model, opt).run(x, y)
            assert opt.update_count == 3
        results.append(tfl.get_masks(model))
    fit_masks, loop_masks = results
    for key in fit_masks:
        np.testing.assert_array_equal(fit_masks[key], loop_masks[key])


if BACKEND == "tensorflow":  # a tf.GradientTape loop (the JAX loop runs in the tests above)
    test_custom_tf_loop_gives_the_same_masks_as_fit = _custom_tf_loop_gives_the_same_masks_as_fit


def test_errors():
    model = sparse_mlp()
    with pytest.raises(ValueError, match="end_step= or total_steps="):
        tfl.SparseOptimizer(keras.optimizers.SGD(0.1), model, tfl.RigL())
    method = tfl.RigL(end_step=10)
    tfl.SparseOptimizer(keras.optimizers.SGD(0.1), model, method)
    with pytest.raises(ValueError, match="one method object per SparseOptimizer"):
        tfl.SparseOptimizer(keras.optimizers.SGD(0.1), model, method)
    model.compile(tfl.SparseOptimizer(keras.optimizers.SGD(0.1), model,
                                      tfl.SET(end_step=10)), "mse")
    x, y = data(16)
    with pytest.raises(ValueError, match="already updates the masks"):
        model.fit(x, y, verbose=0, callbacks=[tfl.RigL(end_step=2)])
    with pytest.raises(ValueError, match="no trainable masked weight"):
        dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        tfl.SparseOptimizer(keras.optimizers.SGD(0.1), dense, tfl.RigL(end_step=10))


def test_outside_write_in_the_middle_of_sparse_training():
    """A callback writes dense values into every masked kernel while RigL's wrapper is
    live (between two mask updates): the write is masked as it lands (by the masks of that
    moment), training goes on with constant counts, and every masked entry ends at 0."""
    x, y = data(64)
    model = sparse_mlp()
    before = active_counts(model)
    model.compile(keras.optimizers.Adam(0.01), "mse")
    seen = {}

    class Write(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3 and not seen:
                tfl.keras3.api.sync(self.model)
                for layer in tfl.masked_layers(self.model):
                    for weight, mask in layer.masked_weights:
                        weight.assign(np.full(weight.shape, 7.0, "float32"))
                        seen[weight.path] = np.count_nonzero(_np(weight)[_np(mask) == 0])

    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[tfl.RigL(delta_t=2, end_step=14, alpha=0.5), Write()])
    assert seen and all(v == 0 for v in seen.values()), seen
    assert active_counts(model) == before
    for layer in tfl.masked_layers(model):
        for weight, mask in layer.masked_weights:
            assert np.count_nonzero(_np(weight)[_np(mask) == 0]) == 0, weight.path


def _event_tags(folder):
    import glob
    import os
    import tensorflow as tf
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_fit_logs_every_update_to_history_verbose_and_log_dir(tmp_path, capsys):
    """In fit, every mask update is logged as it happens: ``history``, one ``verbose``
    line each, TensorBoard scalars and the sparsity chart under ``log_dir``."""
    x, y = data(32)
    model = sparse_mlp()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    method = tfl.RigL(delta_t=2, end_step=6, alpha=0.5, log_dir=str(tmp_path), verbose=1)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[method])
    assert [r["step"] for r in method.history] == [2, 4, 6]
    counts = active_counts(model)
    for record in method.history:
        assert record["active"] == counts and record["grown"] == record["dropped"]
    assert method.history[-1] == method._keras3_optimizer.last_update()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RigL")]
    assert [line.split(":")[0] for line in lines] == ["RigL step 2", "RigL step 4",
                                                      "RigL step 6"]
    tags = _event_tags(str(tmp_path / "dst"))
    for tag in ("dst/drop_fraction", "dst/connections_changed", "dst/sparsity/total",
                "dst/sparsity/d1/kernel", "dst/connections_changed/d1/kernel"):
        assert tag in tags, tag
    assert (tmp_path / "layer_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_again_reuses_the_compiled_steps_and_takes_the_masks_set_between():
    """A second fit with the same method reuses the first one's compiled steps (compiling
    them again costs seconds per fit call on JAX) and trains from masks set between the
    two fits: with the same counts exactly (no update in the second fit), with other counts
    through updates that keep the new counts (the steps are traced again for the new
    top_k bounds). A new compile gets a new wrapper around the new optimizer."""
    x, y = data(32)
    model = sparse_mlp()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    method = tfl.RigL(delta_t=2, end_step=10, alpha=0.5, total_steps=24)
    functions = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                functions.append(self.model.train_function)

    def fit():
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
                  callbacks=[method, Probe()])

    fit()  # steps 1-4: updates at 2, 4
    traces = method.update_traces
    rng = np.random.default_rng(4)
    same = {k: rng.permutation(m.ravel()).reshape(m.shape)
            for k, m in tfl.get_masks(model).items()}
    tfl.set_masks(model, same)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,  # steps 5-8: 6, 8
              callbacks=[method, Probe()])
    assert active_counts(model) == {k: int(v.sum()) for k, v in same.items()}
    assert method.update_traces == (traces if BACKEND != "torch" else 2 * traces)
    assert method._keras3_optimizer.update_count == 2  # this fit's: 6, 8
    if BACKEND != "torch":
        assert functions[1] is functions[0]  # the same compiled steps
    assert_masked_zero(model)

    other = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in same.items()}
    tfl.set_masks(model, other)
    fit()  # steps 9-12: 10, then none
    wanted = {k: int(v.sum()) for k, v in other.items()}
    assert active_counts(model) == wanted and method.history[-1]["active"] == wanted
    assert method.history[-1]["step"] == 10
    if BACKEND != "torch":
        assert method.update_traces == traces + 1  # traced again for the new bounds
    assert_masked_zero(model)

    tfl.set_masks(model, same)
    fit()  # steps 13-16, beyond end_step: the masks set are the masks trained
    for key, mask in tfl.get_masks(model).items():
        np.testing.assert_array_equal(mask, same[key], err_msg=key)

    adam = keras.optimizers.Adam(0.01)
    model.compile(adam, "mse")
    fit()
    assert model.optimizer is adam and method._keras3_optimizer.inner_optimizer is adam
    assert_masked_zero(model)


def test_no_reuse_of_what_a_fit_traced_once_it_is_stale():
    """The default end_step follows each fit's length, so a second, longer fit updates
    until its own end (the steps are traced again for it); after a fit that raised, a new
    compile with the same optimizer and other metrics is the one trained with
    (fit_scenarios.py, shared with the tf_keras tests)."""
    x, y = data(32)  # 4 steps of 8
    model = sparse_mlp()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    stale_steps_are_traced_again(keras, model, x, y, tfl.RigL(delta_t=2, alpha=0.5), "mse",
                                 "mae")
    assert not isinstance(model.optimizer, SparseOptimizer)
    assert_masked_zero(model)
