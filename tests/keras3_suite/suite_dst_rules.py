"""Keras 3 dynamic sparse training (DST) selection rules and schedules, run once per backend
in its own process by tests/test_keras3.py: the masks RigL, SNFS and GMP choose are
tf_keras's, the bounded top_k and threshold paths choose what the full sort chooses, updates
come at the schedule's cadence with its drop fraction, and GMP's schedule is tfmot's. The
training behaviour (fit, the callback, the optimizer wrapper) is in suite_dst.py. Tiny
models, few steps."""
import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.dst import arrays, schedules
from tf_lottery.masking import selection
from suite_core import BACKEND, data, mlp
from dst_helpers import SIZES, Loop, active_counts, masked_state, sparse_mlp


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


def test_partial_top_k_and_backend_sorts_match_the_full_sort():
    """The bounded paths (k_max, k_change) and this backend's sorts and thresholds choose
    exactly what the full stable sort chooses, ties (zeros, equal gradients) and too-small
    bounds included; on TensorFlow eagerly and compiled by XLA (counting thresholds)."""
    from tf_lottery.dst import updaters
    xp = arrays.get(BACKEND)
    runs = ("eager", "xla") if BACKEND == "tensorflow" else ("jit",)
    shape = (8, 6)  # one shape and jitted steps: JAX compiles each variant once
    rules = (updaters.RigLUpdater(), updaters.MagnitudePruningUpdater())
    compiled = {}

    def new(run, rule, bounds, *values):
        key = (run, rule.name, bounds)
        if key not in compiled:
            def fn(weight, mask, grad):
                unit = updaters.UnitState(weight, mask, grad, None, xp.unit_seed(3, 1, 7), xp,
                                          *bounds)
                return rule.new_mask(unit, 0.4)
            if BACKEND == "jax":
                import jax
                fn = jax.jit(fn)
            elif run == "xla":
                import tensorflow as tf
                fn = tf.function(fn, jit_compile=True)
            compiled[key] = fn
        return np.asarray(compiled[key](*(xp.asarray(v) for v in values)))

    for run in runs:
        rng = np.random.default_rng(1)
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
                full = new(run, rule, (None, None), weight, mask, grad)
                for bounds in ((k_max, None), (None, k_change), (k_max, k_change)):
                    np.testing.assert_array_equal(new(run, rule, bounds, weight, mask, grad),
                                                  full, err_msg=f"{rule.name} {bounds}")
            scores = np.abs(np.round(rng.normal(size=48), 1)).astype("float32")
            np.testing.assert_array_equal(np.asarray(xp.argsort_desc(xp.asarray(scores))),
                                          np.argsort(-scores, kind="stable"))
            np.testing.assert_array_equal(np.asarray(xp.argsort(xp.asarray(scores))),
                                          np.argsort(scores, kind="stable"))
            for k in (1, 5, 48):
                got = xp.kth_largest(xp.asarray(scores), xp.asarray(k, xp.int32), 48)
                assert float(np.asarray(got)) == np.sort(scores)[::-1][k - 1]


def test_schedule_cadence_and_drop_fraction():
    x, y = data(96)
    model = sparse_mlp(0.5)
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
    assert active_counts(model) == {k: v // 2 for k, v in SIZES.items()}


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
    for key, (weight, slots) in masked_state(model, model.optimizer).items():
        assert not weight[masks[key] == 0].any(), key  # the raw variables
        assert not any(slot[masks[key] == 0].any() for slot in slots), key
