"""Pruning-at-initialisation scores on hand-worked examples, and through ``tfl.sparsify``."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.masking import init_scores, scores

# A 2x2 linear model without bias, one example x = [1, 2], target y = [0, 1], loss
# 0.5 * ||x W - y||^2, W = [[1, -1], [0, 2]] (rows: inputs):
#   x W = [1, 3], residual r = [1, 2], gradient G = x^T r = [[1, 2], [2, 4]];
#   SNIP |G * W| = [[1, 2], [0, 8]];
#   H G = x^T (x G) = x^T [5, 10] = [[5, 10], [10, 20]];
#   GraSP -W * HG = [[-5, 10], [0, -40]], importance (negated) [[5, -10], [0, 40]].
X = np.array([[1.0, 2.0]], np.float32)
Y = np.array([[0.0, 1.0]], np.float32)
W = np.array([[1.0, -1.0], [0.0, 2.0]], np.float32)


def _sq_loss(y, out):
    return 0.5 * tf.reduce_sum(tf.square(out - y))


def _linear():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False,
                                                                    name="fc")])
    model.get_layer("fc").kernel.assign(W)
    return model


def test_snip_and_grasp_on_a_hand_worked_linear_model():
    model = _linear()
    kernel = model.get_layer("fc").kernel
    (grad,) = init_scores.loss_gradients(model, [kernel], (X, Y), _sq_loss)
    np.testing.assert_allclose(grad, [[1, 2], [2, 4]])
    np.testing.assert_allclose(scores.snip(W, grad), [[1, 2], [0, 8]])
    (hg,) = init_scores.hessian_gradients(model, [kernel], (X, Y), _sq_loss)
    np.testing.assert_allclose(hg, [[5, 10], [10, 20]])
    np.testing.assert_allclose(scores.grasp(W, hg), [[-5, 10], [0, -40]])
    # temperature 2: x W / 2 = [0.5, 1.5], r = [0.5, 0.5], G = x^T r / 2 = [[.25, .25], [.5, .5]],
    # H G = x^T (x G) / 4 = x^T [1.25, 1.25] / 4
    (hg2,) = init_scores.hessian_gradients(model, [kernel], (X, Y), _sq_loss, temperature=2.0)
    np.testing.assert_allclose(hg2, [[0.3125, 0.3125], [0.625, 0.625]])
    np.testing.assert_array_equal(model.get_layer("fc").kernel.numpy(), W)  # left as found

    snip = tfl.sparsify(_linear(), 0.5, "global", mask_init="snip", data=(X, Y), loss=_sq_loss)
    np.testing.assert_array_equal(tfl.get_masks(snip)["fc/kernel"], [[0, 1], [0, 1]])
    grasp = tfl.sparsify(_linear(), 0.5, "uniform", mask_init="grasp", data=(X, Y),
                         loss=_sq_loss)
    np.testing.assert_array_equal(tfl.get_masks(grasp)["fc/kernel"], [[1, 0], [0, 1]])


# SynFlow on a chain, W1 = [[1, -2], [3, 0.5]], W2 = [[2], [-1]]: with absolute weights and
# an all-ones input, h = [4, 2.5] and R = 4 * 2 + 2.5 * 1 = 10.5;
#   dR/dW1[i, j] = |W2[j]|, so scores1 = |W1| * |W2|^T = [[2, 2], [6, 0.5]];
#   dR/dW2[j] = h[j], so scores2 = [[8], [2.5]].
# One round at 50% (3 of 6 kept, ties to the lower index): 8, 6 and 2.5 stay.
W1 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
W2 = np.array([[2.0], [-1.0]], np.float32)


def _chain(w1=W1, w2=W2):
    model = keras.Sequential([keras.Input((w1.shape[0],)),
                              keras.layers.Dense(w1.shape[1], "relu", use_bias=False, name="a"),
                              keras.layers.Dense(w2.shape[1], use_bias=False, name="b")])
    model.get_layer("a").kernel.assign(w1)
    model.get_layer("b").kernel.assign(w2)
    return model


def test_synflow_on_a_hand_worked_chain():
    s1, s2 = scores.synflow_chain([W1, W2])
    np.testing.assert_allclose(s1, [[2, 2], [6, 0.5]])
    np.testing.assert_allclose(s2, [[8], [2.5]])
    model = _chain()
    kernels = [model.get_layer("a").kernel, model.get_layer("b").kernel]
    grads = init_scores.synflow_gradients(model, kernels)
    np.testing.assert_allclose(scores.synflow(W1, grads[0]), s1)
    np.testing.assert_allclose(scores.synflow(W2, grads[1]), s2)
    np.testing.assert_array_equal(kernels[0].numpy(), W1)  # signs restored
    sparse = tfl.sparsify(model, 0.5, "global", mask_init="synflow", synflow_iterations=1)
    masks = tfl.get_masks(sparse)
    np.testing.assert_array_equal(masks["a/kernel"], [[0, 0], [1, 0]])
    np.testing.assert_array_equal(masks["b/kernel"], [[1], [1]])


def test_iterative_synflow_matches_the_numpy_reference():
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 5)).astype(np.float32)
    w2 = rng.normal(size=(5, 3)).astype(np.float32)
    expected = {"a/kernel": np.ones_like(w1), "b/kernel": np.ones_like(w2)}
    for density in scores.synflow_densities(0.2, 4):
        s = scores.synflow_chain([w1, w2], [expected["a/kernel"], expected["b/kernel"]])
        expected = scores.global_top_masks({"a/kernel": s[0], "b/kernel": s[1]},
                                           1 - density, expected)
    masks = tfl.get_masks(tfl.sparsify(_chain(w1, w2), 0.8, "global", mask_init="synflow",
                                       synflow_iterations=4))
    for key in expected:
        np.testing.assert_array_equal(masks[key], expected[key])
    assert sum(int(m.sum()) for m in masks.values()) == 9  # 45 weights, 36 pruned


def test_synflow_schedule_is_exponential():
    np.testing.assert_allclose(scores.synflow_densities(0.01, 2), [0.1, 0.01])
    np.testing.assert_allclose(scores.synflow_densities(0.5, 1), [0.5])
    with pytest.raises(ValueError, match="iterations >= 1"):
        scores.synflow_densities(0.5, 0)


def test_top_masks_counts_ties_and_existing_masks():
    np.testing.assert_array_equal(scores.top_mask(np.array([3.0, 1.0, 3.0, 2.0]), 0.5),
                                  [1, 0, 1, 0])
    np.testing.assert_array_equal(
        scores.top_mask(np.array([3.0, 1.0, 3.0, 2.0]), 0.5, np.array([0, 1, 1, 1])),
        [0, 0, 1, 1])
    out = scores.global_top_masks({"a": np.array([5.0, 0.0]), "b": np.array([1.0, 4.0])}, 0.5)
    np.testing.assert_array_equal(out["a"], [1, 0])
    np.testing.assert_array_equal(out["b"], [0, 1])
    rng = np.random.default_rng(3)
    assert int(scores.top_mask(scores.random((10, 10), rng), 0.37).sum()) == 63
    assert np.array_equal(scores.importance("grasp", np.array([1.0])), [-1.0])
    with pytest.raises(ValueError, match="not finite"):
        scores.top_mask(np.array([np.inf, 1.0]), 0.5)


def test_sparsify_layerwise_snip_keeps_each_layers_count_and_needs_data():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, "relu", name="h"),
                              keras.layers.Dense(4, name="out")])
    x = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    y = np.arange(32) % 4
    with pytest.raises(ValueError, match=r"pass data=\(x, y\)"):
        tfl.sparsify(model, 0.5, mask_init="snip")
    sparse = tfl.sparsify(model, 0.5, "uniform", mask_init="snip", data=(x, y))
    masks = tfl.get_masks(sparse)
    assert {k: int(m.size - m.sum()) for k, m in masks.items()} == {"h/kernel": 64,
                                                                    "out/kernel": 32}
    kernel = model.get_layer("h").kernel.numpy()  # shared with the sparse model
    assert np.all(kernel[masks["h/kernel"] == 0] == 0)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_global_scores_on_a_conv_model_keep_pinned_layers_and_exact_counts(method, tiny_data):
    from conftest import build_tiny_model

    model = build_tiny_model()
    before = model.get_weights()
    sparse = tfl.sparsify(model, 0.9, "global", mask_init=method, data=tiny_data,
                          dense_layers=("conv",), synflow_iterations=10)
    masks = tfl.get_masks(sparse)
    assert masks["conv/kernel"].all()
    assert int(masks["d1/kernel"].sum() + masks["d2/kernel"].sum()) == 4928 - round(0.9 * 4928)
    for after, value in zip(model.get_weights(), before):  # only masked entries changed
        changed = after != value
        assert np.all(after[changed] == 0)
