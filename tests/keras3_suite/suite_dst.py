"""Keras 3 dynamic sparse training (RigL, SET, SNFS, static, GMP), run once per backend in
its own process by tests/test_keras3.py. Tiny models, few steps."""
import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.dst import arrays, schedules
from tf_lottery.keras3.dst import SparseOptimizer
from tf_lottery.masking import selection
from suite_core import BACKEND, _np, data, mlp

SIZES = {"d1/kernel": 512, "d2/kernel": 768, "d3/kernel": 96}


def _sparse(sparsity=0.75, seed=0):
    return tfl.sparsify(mlp(seed), sparsity, "uniform", seed=seed)


def _active(model):
    return {k: int(v.sum()) for k, v in tfl.get_masks(model).items()}


def _masked_state(model, optimizer):
    """weight key -> (weight, [optimizer slots]) as numpy."""
    out = {}
    for layer in tfl.masked_layers(model):
        for name, (weight, _) in zip(layer.weight_names, layer.masked_weights):
            slots, _ = tfl.keras3.state.slots_of([tfl.keras3.state.unwrap(optimizer)], weight)
            out[f"{layer.layer.name}/{name}"] = (_np(weight), [_np(s) for s in slots])
    return out


class Loop:
    """A custom training loop over ``opt``: tf.GradientTape + ``opt.apply`` in a
    tf.function on TensorFlow, autograd + ``opt.apply`` on PyTorch, a jitted
    ``stateless_apply`` step on JAX (the state is written back to the variables and the
    masks synced after every ``run``)."""

    def __init__(self, model, opt, two_kinds=False):
        self.model, self.opt = model, opt
        self.two_kinds, self.count = two_kinds, 0
        loss = keras.losses.MeanSquaredError()
        if BACKEND == "tensorflow":
            import tensorflow as tf

            @tf.function
            def step(x, y):
                with tf.GradientTape() as tape:
                    value = loss(y, model(x, training=True))
                tvars = model.trainable_variables
                opt.apply(tape.gradient(value, tvars), tvars)
            self.step = step
        elif BACKEND == "torch":
            def step(x, y):
                model.zero_grad()
                value = loss(y, model(x, training=True))
                value.backward()
                tvars = model.trainable_variables
                opt.apply([v.value.grad for v in tvars], tvars)
            self.step = step
        else:
            import jax

            def loss_fn(tv, ntv, x, y):
                pred, ntv = model.stateless_call(tv, ntv, x, training=True)
                return loss(y, pred), ntv

            def step(state, x, y):
                tv, ntv, ov = state
                (_, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, y)
                tv, ov = opt.stateless_apply(ov, grads, tv)
                return tv, ntv, ov
            self.step = jax.jit(step)
            # The ordinary and the update step compiled apart (SparseOptimizer.traced_as)
            self.steps = {kind: jax.jit(self._traced(step, kind))
                          for kind in ("ordinary", "update")}

    def _traced(self, step, kind):
        def traced(*args):
            with self.opt.traced_as(kind):
                return step(*args)
        return traced

    def run(self, x, y, batch=8):
        batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        if BACKEND in ("tensorflow", "torch"):
            for bx, by in batches:
                self.step(bx, by)
            return
        model, opt = self.model, self.opt
        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables],
                 [v.value for v in opt.variables])
        for bx, by in batches:
            step = self.step
            if self.two_kinds:
                self.count += 1
                step = self.steps["update" if opt.update_due(self.count) else "ordinary"]
            state = step(state, bx, by)
        for group, values in zip((model.trainable_variables, model.non_trainable_variables,
                                  opt.variables), state):
            for variable, value in zip(group, values):
                variable.assign(value)
        opt.sync_masks()


# RigL through fit here; SET and SNFS run the same step in the tests below (custom loop,
# hand-built case): one fit trace per method would triple this file's time on JAX.
@pytest.mark.parametrize("method", ["rigl"])
def test_fit_keeps_counts_and_zeros(method):
    x, y = data(64)
    model = _sparse()
    before = tfl.get_masks(model)
    optimizer = keras.optimizers.Adam(0.01)
    model.compile(optimizer, "mse")
    cls = {"rigl": tfl.RigL, "set": tfl.SET, "snfs": tfl.SNFS}[method]
    callback = cls(delta_t=2, end_step=14, alpha=0.5)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    assert model.optimizer is optimizer  # the wrapper is gone after fit
    after = tfl.get_masks(model)
    assert _active(model) == {k: int(v.sum()) for k, v in before.items()}
    assert sum(int(np.sum(before[k] != after[k])) for k in before) > 0  # masks moved
    for key, (weight, slots) in _masked_state(model, optimizer).items():
        off = after[key] == 0
        assert np.count_nonzero(weight[off]) == 0, key
        for slot in slots:
            assert np.count_nonzero(slot[off]) == 0, key
    assert [r["step"] for r in callback.history] == [8, 14]  # last update of each epoch
    for record in callback.history:
        assert record["grown"] == record["dropped"]
        assert record["active"] == _active(model)
    x2, y2 = data(16, seed=5)
    np.testing.assert_allclose(_np(model(x2)), _np(tfl.strip(model)(x2)), rtol=1e-5, atol=1e-6)


def test_fit_trains_as_the_in_step_conditional_does():
    """The callback's fit (on JAX: the ordinary and the update step compiled apart and
    chosen on the host) and SparseOptimizer compiled directly (one step with the update
    under a conditional) give the same masks and weights, updates across epochs
    included; so does a custom JAX loop with the two kinds of step."""
    x, y = data(48)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(type(self.model.train_function).__name__)

    results = []
    for route in ("callback", "compiled", "two_kinds"):
        if route == "two_kinds" and BACKEND != "jax":
            continue
        model = _sparse()
        method = tfl.RigL(delta_t=3, end_step=10, alpha=0.5)
        sgd = keras.optimizers.SGD(0.05, momentum=0.9)
        if route == "callback":
            model.compile(sgd, "mse")
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                      callbacks=[method, Probe()])
            assert [r["step"] for r in method.history] == [6, 9]  # last of each epoch
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
    if BACKEND == "jax":
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
    model = _sparse()
    model.compile(keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(9)
    new = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in tfl.get_masks(model).items()}
    seen = {}

    class SetMasks(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 3 and not seen:
                tfl.set_masks(self.model, new)
                seen.update(_active(self.model))

    method = tfl.RigL(delta_t=2, end_step=14, alpha=0.5)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[method, SetMasks()])
    wanted = {k: int(v.sum()) for k, v in new.items()}
    assert seen == wanted
    assert _active(model) == wanted
    assert method.history[-1]["active"] == wanted
    for layer in tfl.masked_layers(model):
        for weight, mask in layer.masked_weights:
            assert np.count_nonzero(_np(weight)[_np(mask) == 0]) == 0, weight.path


def test_updates_follow_the_step_count_a_later_callback_restores():
    """A callback after RigL's that sets the step count when training begins (as
    ``BackupAndRestore`` does when it resumes): updates still come at multiples of
    delta_t of the restored count."""
    x, y = data(64)
    model = _sparse()
    model.compile(keras.optimizers.SGD(0.05), "mse")

    class Resume(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.optimizer.iterations.assign(3)

    method = tfl.RigL(delta_t=2, end_step=20, alpha=0.5, total_steps=40, verbose=0)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[method, Resume()])
    assert int(_np(model.optimizer.iterations)) == 11
    assert [r["step"] for r in method.history] == [10]  # the epoch's last update
    assert method._keras3_optimizer.update_count == 4  # steps 4, 6, 8, 10


def test_grown_weights_and_adam_state_are_zero_at_the_update():
    x, y = data(48)
    model = _sparse()
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
    for key, (weight, slots) in _masked_state(model, optimizer).items():
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


def test_schedule_cadence_and_drop_fraction():
    x, y = data(96)
    model = _sparse(0.5)
    opt = tfl.SparseOptimizer(keras.optimizers.SGD(0.05), model,
                              tfl.SET(delta_t=3, end_step=10, alpha=0.4))
    loop = Loop(model, opt)
    changed, steps = [], []
    for step in range(1, 13):
        before = tfl.get_masks(model)
        loop.run(x[8 * (step - 1):8 * step], y[8 * (step - 1):8 * step])
        after = tfl.get_masks(model)
        if any(np.any(before[k] != after[k]) for k in before):
            changed.append(step)
        record = opt.last_update()
        if record is not None and record["step"] == step:
            steps.append(step)
            assert record["drop_fraction"] == pytest.approx(schedules.cosine(step, 0.4, 10),
                                                            abs=1e-6)
            for key, size in SIZES.items():
                # floor(active * f) dropped, and as many grown; a dropped entry may be
                # regrown at once, so at most that many connections change
                n_drop = int(np.floor((size // 2) * np.float32(record["drop_fraction"])))
                assert record["dropped"][key] == record["grown"][key] <= n_drop
            assert sum(record["grown"].values()) > 0
    assert steps == [3, 6, 9] and changed == [3, 6, 9]
    assert opt.update_count == 3
    assert _active(model) == {k: v // 2 for k, v in SIZES.items()}


def _hand_built(seed=0, ties=False):
    """Weights with distinct magnitudes, a mask with half the entries on, distinct grads;
    with ``ties``, a third of the weights 0 and the grads in 4 values (on TensorFlow the
    tie-breaking draws are the tf_keras path's too)."""
    rng = np.random.default_rng(seed)
    kernel = (rng.permutation(48).astype("float32") + 1.0).reshape(8, 6) / 10.0
    kernel *= rng.choice([-1.0, 1.0], size=kernel.shape).astype("float32")
    mask = np.zeros(48, "float32")
    mask[rng.permutation(48)[:24]] = 1.0
    grad = ((rng.permutation(48).astype("float32") + 1.0) / 7.0).reshape(8, 6)
    if ties:
        kernel[:, :2] = 0.0
        grad = np.floor(grad).astype("float32")
    return kernel * mask.reshape(8, 6), mask.reshape(8, 6), grad


@pytest.mark.parametrize("method", ["rigl", "snfs", "gmp"])
def test_same_choice_as_tf_keras(method):
    kernel, mask, grad = _hand_built(ties=BACKEND == "tensorflow")

    def make():
        if method == "gmp":
            sched = tfl._keras.tfmot.sparsity.keras.ConstantSparsity(0.75, 0, frequency=1)
            return tfl.GradualMagnitudePruning(sched)
        cls = tfl.RigL if method == "rigl" else tfl.SNFS
        return cls(delta_t=1, end_step=10, alpha=0.5)

    # Keras 3
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, use_bias=False,
                                                                     name="d")])
    sparse = tfl.sparsify(model, 0.0)
    sparse.layers[0].layer.kernel.assign(kernel)
    tfl.set_masks(sparse, {"d/kernel": mask})
    opt = tfl.SparseOptimizer(keras.optimizers.SGD(0.0), sparse, make())
    opt.apply([keras.ops.convert_to_tensor(grad)], sparse.trainable_variables)
    opt.sync_masks()
    ours = tfl.get_masks(sparse)["d/kernel"]
    # tf_keras, in this same process
    import tf_keras
    legacy = tf_keras.Sequential([tf_keras.Input((8,)),
                                  tf_keras.layers.Dense(6, use_bias=False, name="d")])
    legacy_sparse = tfl.sparsify(legacy, 0.0)
    tfl.set_masks(legacy_sparse, {"d/kernel": mask})
    tfl.masked_layers(legacy_sparse)[0].masked_weights[0][0].assign(kernel)
    legacy_opt = tfl.SparseOptimizer(tf_keras.optimizers.SGD(0.0), legacy_sparse,
                                     make())
    variables = legacy_sparse.trainable_variables
    import tensorflow as tf
    legacy_opt.apply_gradients([(tf.constant(grad), variables[0])])
    theirs = tfl.get_masks(legacy_sparse)["d/kernel"]
    np.testing.assert_array_equal(ours, theirs)
    expected_active = 12 if method == "gmp" else 24
    assert int(ours.sum()) == expected_active
    assert int(np.sum(ours != mask)) > 0


def test_gmp_reaches_its_target_and_schedule_matches_tfmot():
    tfmot = tfl._keras.tfmot
    sched = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.75, begin_step=2, end_step=8,
                                                 frequency=2)
    import tensorflow as tf
    xp = arrays.get(BACKEND)
    for step in range(0, 12):
        prune, sparsity = sched(tf.constant(step, tf.int64))
        ours = schedules.pruning_schedule(sched, xp.asarray(step, xp.int64), xp)
        assert bool(np.asarray(ours[0])) == bool(prune.numpy()), step
        assert float(np.asarray(ours[1])) == pytest.approx(float(sparsity.numpy()), abs=1e-6)
    x, y = data(80)
    model = tfl.sparsify(mlp(), 0.0)
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    callback = tfl.GradualMagnitudePruning(sched)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    masks = tfl.get_masks(model)
    for key, size in SIZES.items():
        assert int(np.sum(masks[key] == 0)) == selection.count_zeros(size, 0.75), key
    assert callback.history[-1]["step"] == 8
    assert callback.history[-1]["target_sparsity"] == pytest.approx(0.75)
    for key, (weight, slots) in _masked_state(model, model.optimizer).items():
        assert not weight[masks[key] == 0].any(), key  # the raw variables
        assert not any(slot[masks[key] == 0].any() for slot in slots), key


def test_static_sparse_keeps_masks():
    x, y = data(32)
    model = _sparse()
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
        model = _sparse()
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
    model = _sparse()
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


def test_partial_top_k_and_backend_sorts_match_the_full_sort():
    """The bounded paths (k_max, k_change) and this backend's sorts and thresholds choose
    exactly what the full stable sort chooses, ties (zeros, equal gradients) and too-small
    bounds included."""
    from tf_lottery.dst import updaters
    xp = arrays.get(BACKEND)
    rng = np.random.default_rng(1)
    shape = (8, 6)  # one shape and jitted steps: JAX compiles each variant once
    rules = (updaters.RigLUpdater(), updaters.MagnitudePruningUpdater())
    compiled = {}

    def new(rule, bounds, *values):
        key = (rule.name, bounds)
        if key not in compiled:
            def fn(weight, mask, grad):
                unit = updaters.UnitState(weight, mask, grad, None, xp.unit_seed(3, 1, 7), xp,
                                          *bounds)
                return rule.new_mask(unit, 0.4)
            if BACKEND == "jax":
                import jax
                fn = jax.jit(fn)
            compiled[key] = fn
        return np.asarray(compiled[key](*(xp.asarray(v) for v in values)))

    for trial in range(6):
        mask = np.zeros(48, "float32")
        mask[rng.permutation(48)[:14]] = 1.0
        mask = mask.reshape(shape)
        weight = rng.normal(size=shape).astype("float32") * mask
        weight[rng.random(shape) < 0.3] = 0.0
        grad = np.round(rng.normal(size=shape), 1).astype("float32")
        k_max = 14 if trial % 2 else 7  # the active count, or a too-small bound
        k_change = 6 if trial % 2 else 2
        for rule in rules:
            full = new(rule, (None, None), weight, mask, grad)
            for bounds in ((k_max, None), (None, k_change), (k_max, k_change)):
                np.testing.assert_array_equal(new(rule, bounds, weight, mask, grad), full,
                                              err_msg=f"{rule.name} {bounds}")
        scores = np.abs(np.round(rng.normal(size=48), 1)).astype("float32")
        np.testing.assert_array_equal(np.asarray(xp.argsort_desc(xp.asarray(scores))),
                                      np.argsort(-scores, kind="stable"))
        np.testing.assert_array_equal(np.asarray(xp.argsort(xp.asarray(scores))),
                                      np.argsort(scores, kind="stable"))
        for k in (1, 5, 48):
            got = xp.kth_largest(xp.asarray(scores), xp.asarray(k, xp.int32), 48)
            assert float(np.asarray(got)) == np.sort(scores)[::-1][k - 1]


def test_outside_write_in_the_middle_of_sparse_training():
    """A callback writes dense values into every masked kernel while RigL's wrapper is
    live (between two mask updates): the write is masked as it lands (by the masks of that
    moment), training goes on with constant counts, and every masked entry ends at 0."""
    x, y = data(64)
    model = _sparse()
    before = _active(model)
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
    assert _active(model) == before
    for layer in tfl.masked_layers(model):
        for weight, mask in layer.masked_weights:
            assert np.count_nonzero(_np(weight)[_np(mask) == 0]) == 0, weight.path
