"""Drop/grow rules (tf_lottery.dst.updaters) and the in-graph mask writer
(tf_lottery.masking.update), on hand-built tensors."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tf_lottery._keras import tf
from tf_lottery.dst import updaters
from tf_lottery.masking.update import assign_mask


def _state(weight, mask, grad=None, momentum=None, seed=0, unit=0, step=100):
    f = lambda v: None if v is None else tf.constant(np.asarray(v, np.float32))  # noqa: E731
    return updaters.UnitState(weight=f(weight), mask=f(mask), grad=f(grad), momentum=f(momentum),
                              seed=updaters.unit_seed(seed, unit, step))


def test_rigl_drops_smallest_and_grows_largest_gradient():
    weight = [0.9, -0.1, 0.5, 0.0, -0.05, 0.0, 0.0, 0.7, 0.0, 0.0]
    mask = [1, 1, 1, 0, 1, 0, 0, 1, 0, 0]  # 5 active
    grad = [9.0, 0.0, 0.0, 0.3, 0.0, -2.0, 0.1, 0.0, 1.5, -0.2]
    new = updaters.RigLUpdater().new_mask(_state(weight, mask, grad), 0.4).numpy()
    # n_drop = floor(5 * 0.4) = 2: drop |w| = 0.05 (index 4) and 0.1 (index 1);
    # grow the two largest |grad| outside the kept set: index 5 (2.0) and 8 (1.5).
    np.testing.assert_array_equal(new, [1, 0, 1, 0, 0, 1, 0, 1, 1, 0])


def test_just_dropped_weight_may_be_regrown():
    weight = [0.9, -0.1, 0.5, 0.0]
    mask = [1, 1, 1, 0]
    grad = [0.0, 5.0, 0.0, 1.0]  # the dropped weight (index 1) has the largest gradient
    new = updaters.RigLUpdater().new_mask(_state(weight, mask, grad), 0.34).numpy()
    np.testing.assert_array_equal(new, mask)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("rule", [updaters.RigLUpdater(), updaters.SETUpdater(),
                                  updaters.SNFSUpdater()])
def test_counts_are_exact(rule, fraction):
    rng = np.random.default_rng(1)
    shape = (7, 11, 3)
    mask = (rng.random(shape) < 0.3).astype(np.float32)
    weight = rng.normal(size=shape) * mask
    weight[0, 0, :] = 0.0  # ties at zero among active entries
    grad = rng.normal(size=shape)
    grad[1] = 0.0  # ties among candidates
    state = _state(weight, mask, grad, momentum=grad)
    new = rule.new_mask(state, fraction).numpy()
    assert new.shape == shape
    assert set(np.unique(new)) <= {0.0, 1.0}
    assert int(new.sum()) == int(mask.sum())
    n_drop = int(np.floor(mask.sum() * np.float32(fraction)))
    kept = int((new * mask).sum())
    assert kept >= int(mask.sum()) - n_drop  # regrown ones may be among the dropped


def test_ties_broken_by_seed_deterministically():
    mask = np.ones(40, np.float32)
    mask[20:] = 0
    weight = np.where(mask > 0, 0.5, 0.0)  # all active weights tie
    grad = np.where(mask > 0, 0.0, 1.0)  # all candidates tie
    rule = updaters.RigLUpdater()
    a = rule.new_mask(_state(weight, mask, grad, seed=1), 0.25).numpy()
    b = rule.new_mask(_state(weight, mask, grad, seed=1), 0.25).numpy()
    np.testing.assert_array_equal(a, b)
    others = [rule.new_mask(_state(weight, mask, grad, seed=s), 0.25).numpy() for s in range(2, 6)]
    assert any(not np.array_equal(a, o) for o in others)
    assert int(a.sum()) == 20 and int(a[20:].sum()) == 5


def test_set_grows_at_random_reproducibly():
    rng = np.random.default_rng(2)
    mask = (rng.random(500) < 0.2).astype(np.float32)
    weight = rng.normal(size=500) * mask
    rule = updaters.SETUpdater()
    a = rule.new_mask(_state(weight, mask, unit=3, step=200), 0.5).numpy()
    b = rule.new_mask(_state(weight, mask, unit=3, step=200), 0.5).numpy()
    c = rule.new_mask(_state(weight, mask, unit=3, step=300), 0.5).numpy()
    d = rule.new_mask(_state(weight, mask, unit=4, step=200), 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert a.sum() == c.sum() == d.sum() == mask.sum()


def test_unit_seed_is_a_pure_function():
    first = updaters.unit_seed(7, 3, tf.constant(500, tf.int64)).numpy()
    again = tf.function(lambda s: updaters.unit_seed(7, 3, s))(tf.constant(500, tf.int64))
    np.testing.assert_array_equal(first, again.numpy())
    assert not np.array_equal(first, updaters.unit_seed(7, 4, 500).numpy())
    assert not np.array_equal(first, updaters.unit_seed(7, 3, 600).numpy())


def test_snfs_grows_by_momentum():
    weight = [0.9, 0.2, 0.0, 0.0, 0.0]
    mask = [1, 1, 0, 0, 0]
    momentum = [0.0, 0.0, 0.1, -0.8, 0.3]
    new = updaters.SNFSUpdater().new_mask(_state(weight, mask, momentum=momentum), 0.5).numpy()
    np.testing.assert_array_equal(new, [1, 0, 0, 1, 0])


def test_static_and_magnitude_pruning():
    mask = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 0], np.float32)
    weight = np.array([0.1, -0.9, 0.3, 0.05, 0, -0.4, 0.6, 0.2, -0.7, 0], np.float32)
    state = _state(weight, mask)
    np.testing.assert_array_equal(updaters.StaticUpdater().new_mask(state, 0.3).numpy(), mask)
    prune = updaters.MagnitudePruningUpdater()
    new = prune.new_mask(state, 0.5).numpy()  # 5 zeros of 10: keep the 5 largest |w|
    np.testing.assert_array_equal(new, [0, 1, 1, 0, 0, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(prune.new_mask(state, 0.1).numpy(), mask)  # never grows
    assert prune.new_mask(state, 1.0).numpy().sum() == 0


def _coarse_tie_keys(base):
    class Coarse(type(base)):
        """``base`` with tie keys of 4 values: ties of both the scores and the tie keys,
        which the rule then breaks by index."""

        def uniform_n(self, n, seed):
            return tf.floor(super().uniform_n(n, seed) * 4.0) / 4.0
    return Coarse()


@pytest.mark.parametrize("run", ["eager", "graph", "xla"])
@pytest.mark.parametrize("coarse", [False, True])
def test_bounded_selections_choose_what_the_full_sort_chooses(coarse, run):
    """The partial top_k paths (``k_max``: bounded by the active count; ``k_change``:
    by the entries one update changes; both, and bounds too small, which fall back)
    choose exactly the full stable sort's entries, ties of scores and tie keys included,
    eagerly, in ``tf.function`` (thresholds from an unsorted ``top_k``) and compiled by XLA
    (thresholds from counting passes; fewer rules and bounds there, each a compilation)."""
    xp = _coarse_tie_keys(updaters.arrays.TF) if coarse else updaters.arrays.TF
    rng = np.random.default_rng(7)
    rules = (updaters.RigLUpdater(), updaters.SETUpdater(), updaters.SNFSUpdater(),
             updaters.MagnitudePruningUpdater())
    compiled = {}

    def new_mask(rule, k_max, k_change, *tensors):
        key = (rule.name, k_max, k_change)
        if key not in compiled:
            def fn(weight, mask, grad, seed, amount):
                state = updaters.UnitState(weight, mask, grad, grad, seed, xp, k_max, k_change)
                return rule.new_mask(state, amount)
            compiled[key] = fn if run == "eager" else tf.function(fn, jit_compile=run == "xla")
        return compiled[key](*tensors).numpy()

    for trial in range(8):
        shape = (9, 7)
        mask = np.zeros(63, np.float32)
        mask[rng.permutation(63)[:20]] = 1.0
        mask = mask.reshape(shape)
        weight = np.round(rng.normal(size=shape), 1).astype(np.float32) * mask
        weight[rng.random(shape) < 0.3] = 0.0
        grad = np.round(rng.normal(size=shape), 1).astype(np.float32)
        grad[rng.random(shape) < 0.3] = 0.0
        fraction = (0.3, 0.5, 0.05, 0.9)[trial % 4]
        for rule in rules:
            amount = fraction if rule.name != "magnitude_pruning" else 0.8
            tensors = [tf.constant(v) for v in (weight, mask, grad)] + [
                updaters.unit_seed(trial, 1, 300), tf.constant(amount, tf.float32)]
            bounds = ((None, None), (20, None), (8, None), (None, 6), (20, 6), (None, 2),
                      (None, 10))
            if run != "eager":  # (each bound is a function to trace or compile)
                if rule.name in ("snfs", "magnitude_pruning"):
                    continue
                bounds = bounds[:1] + bounds[4:6]
            results = [new_mask(rule, k_max, k_change, *tensors) for k_max, k_change in bounds]
            for k, other in enumerate(results[1:], 1):
                np.testing.assert_array_equal(other, results[0], err_msg=f"{rule.name} {k}")


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.sampled_from([-np.inf, -2.5, -1.0, -0.0, 0.0, 1e-40, 0.5, 1.0, 3.0,
                                        np.inf, float(np.finfo(np.float32).min)]) |
                       st.floats(-1e6, 1e6, width=32), min_size=1, max_size=40),
       data=st.data())
def test_kth_largest_by_counting_is_the_sorted_value(values, data):
    """The counting threshold equals the sorted k-th largest value (ties, signed zeros,
    infinities and subnormals included); k = 0 gives +inf."""
    x = np.asarray(values, np.float32)
    k = data.draw(st.integers(0, len(x)))
    got = updaters.arrays.kth_largest_by_counting(updaters.arrays.TF, tf.constant(x),
                                                  tf.constant(k)).numpy()
    want = np.inf if k == 0 else np.sort(x)[::-1][k - 1]
    assert got == want, (x, k, got, want)


def test_thresholds_know_where_the_step_runs():
    """``TF.kth_largest`` counts inside XLA-compiled functions and uses ``top_k`` in the
    graph executor and eagerly, and both give the k-th largest value."""
    seen = []

    def probe(x):
        seen.append(updaters.arrays._in_xla(tf))
        return updaters.arrays.TF.kth_largest(x, tf.constant(3), 5)

    x = tf.constant([0.5, -1.0, 2.0, 2.0, 0.0, 7.0])
    results = [float(probe(x)), float(tf.function(probe)(x)),
               float(tf.function(probe, jit_compile=True)(x))]
    assert seen == [False, False, True]
    assert results == [2.0, 2.0, 2.0]


def test_xla_compiles_the_update():
    """Static shapes only: the rule compiles under XLA (what TPUStrategy needs; thresholds
    from counting passes, bounded paths) and chooses what eager does."""
    rng = np.random.default_rng(3)
    mask = tf.constant((rng.random((16, 8)) < 0.5).astype(np.float32))
    weight = tf.constant(rng.normal(size=(16, 8)).astype(np.float32)) * mask
    grad = tf.constant(rng.normal(size=(16, 8)).astype(np.float32))

    @tf.function(jit_compile=True)
    def update(step, fraction):
        state = updaters.UnitState(weight, mask, grad, None, updaters.unit_seed(0, 0, step),
                                   k_max=64, k_change=20)
        return updaters.RigLUpdater().new_mask(state, fraction)

    compiled = update(tf.constant(100, tf.int64), tf.constant(0.3))
    eager = updaters.RigLUpdater().new_mask(
        updaters.UnitState(weight, mask, grad, None, updaters.unit_seed(0, 0, 100)), 0.3)
    np.testing.assert_array_equal(compiled.numpy(), eager.numpy())


def test_assign_mask_zeroes_changed_connections():
    weight = tf.Variable([1.0, 2.0, 0.0, 0.0, 5.0])
    mask = tf.Variable([1.0, 1.0, 0.0, 0.0, 1.0])
    momentum = tf.Variable([0.1, 0.2, 0.0, 0.0, 0.5])
    accumulator = tf.Variable([0.3, 0.3, 0.1, 0.1, 0.3])  # Adagrad-like, initial value 0.1
    new = tf.constant([1.0, 0.0, 1.0, 0.0, 1.0])  # drop 1, grow 2
    grown, dropped = tf.function(assign_mask)(weight, mask, new, [momentum, accumulator],
                                              [0.0, 0.1])
    assert int(grown) == 1 and int(dropped) == 1
    np.testing.assert_array_equal(mask.numpy(), new.numpy())
    np.testing.assert_allclose(weight.numpy(), [1.0, 0.0, 0.0, 0.0, 5.0])
    np.testing.assert_allclose(momentum.numpy(), [0.1, 0.0, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(accumulator.numpy(), [0.3, 0.1, 0.1, 0.1, 0.3])


def test_jax_thresholds_count_in_a_loop_op_only_where_traced():
    """Under ``jax.jit`` the 32 counting passes are one loop op (compiled once); eagerly
    they run op by op, since JAX would compile a loop op at every eager call."""
    jax = pytest.importorskip("jax")
    xp = updaters.arrays.get("jax")
    loops = []

    def fori_loop(*args):
        loops.append(args[0])
        return type(xp).fori_loop(xp, *args)

    xp.fori_loop = fori_loop
    try:
        x = jax.numpy.asarray([0.5, -1.0, 2.0, 2.0, 0.0, 7.0], "float32")
        eager = float(xp.kth_largest(x, 3, 5))
        traced = float(jax.jit(lambda v: xp.kth_largest(v, 3, 5))(x))
    finally:
        del xp.fori_loop
    assert loops == [32] and eager == traced == 2.0
