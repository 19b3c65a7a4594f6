"""Weight keys and layers: unique keys, output layers, global pools, unprunable layers."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras
from tf_lottery.lottery import IterativeMagnitudePruning
from tf_lottery.masking.api import output_keys
from tf_lottery.masking.selection import count_zeros, prune_surviving


def _nested_with_name_clash():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(5, name="dense")(inner_in), name="block")
    inp = keras.Input((4,))
    h = keras.layers.Dense(6, name="dense")(inp)
    return keras.Model(inp, inner(h), name="outer")


def test_nested_models_reusing_a_layer_name_are_refused():
    model = _nested_with_name_clash()
    message = (r"weight key 'dense/kernel' names two weights, of 'outer/dense' and "
               r"'outer/block/dense'.*layer names must be unique across nested models; "
               r"rename one \(e.g. name='dense_2'\)")
    for call in (lambda: tfl.sparsify(model, 0.5, seed=0),
                 lambda: tfl.sparsity_distribution(model, 0.5),
                 lambda: tfl.get_weights(model),
                 lambda: tfl.sparsity_report(model)):
        with pytest.raises(ValueError, match=message):
            call()


def test_a_layer_shared_by_two_nested_models_is_one_weight():
    shared = keras.layers.Dense(4, name="shared")
    a_in, b_in = keras.Input((4,)), keras.Input((4,))
    a = keras.Model(a_in, shared(a_in), name="a")
    b = keras.Model(b_in, keras.layers.Dense(3, name="head")(shared(b_in)), name="b")
    inp = keras.Input((4,))
    model = keras.Model(inp, b(a(inp)))
    assert list(tfl.get_weights(model)) == ["shared/kernel", "head/kernel"]
    assert tfl.sparsity_report(model)[-1]["params"] == 16 + 12


def test_output_keys_follow_outputs_not_layer_order():
    inp = keras.Input((8,))
    h = keras.layers.Dense(6, name="trunk")(inp)
    first = keras.layers.Dense(3, name="head_a")(h)
    hidden = keras.layers.Dense(5, name="hidden_b")(h)
    second = keras.layers.Dense(2, name="head_b")(hidden)
    probs = keras.layers.Activation("softmax", name="softmax")(first)
    model = keras.Model(inp, [probs, keras.layers.Dropout(0.1)(second)])
    assert output_keys(model) == ["head_a/kernel", "head_b/kernel"]
    sparse = tfl.sparsify(model, 0.5, seed=0)
    assert output_keys(sparse) == ["head_a/kernel", "head_b/kernel"]

    # an output made inside a nested model, then an Activation outside it
    sub_in = keras.Input((6,))
    sub = keras.Model(sub_in, keras.layers.Dense(4, name="logits")(
        keras.layers.Dense(6, name="inner")(sub_in)), name="sub")
    inp = keras.Input((8,))
    nested = keras.Model(inp, keras.layers.Softmax()(sub(keras.layers.Dense(6, name="pre")(inp))))
    assert output_keys(nested) == ["logits/kernel"]
    seq = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, name="s1"),
                            keras.layers.Dense(2, name="s2"), keras.layers.Softmax()])
    assert output_keys(seq) == ["s2/kernel"]


def _two_heads():
    inp = keras.Input((64,))
    h = keras.layers.Dense(20, activation="relu", name="fc")(inp)
    out = keras.layers.Dense(10, name="out")(h)
    aux = keras.layers.Dense(30, name="late")(h)  # after "out" in model.layers
    total = keras.layers.Add(name="sum")([out, keras.layers.Dense(10, name="aux")(aux)])
    return keras.Model(inp, keras.layers.Activation("linear")(total))


def _imp(**kw):
    x = np.random.default_rng(0).random((40, 64)).astype("float32")
    y = np.arange(40) % 10
    return IterativeMagnitudePruning(_two_heads, (x, y), (x, y), keras.optimizers.SGD,
                                     epochs=1, batch_size=20, verbose=0, **kw)


def test_imp_output_fraction_goes_to_the_output_layers():
    imp = _imp(fraction=0.2, output_fraction=0.1, layer_fractions={"late": 0.3})
    model = tfl.sparsify(_two_heads(), 0.0)
    assert list(tfl.get_masks(model))[-1] == "aux/kernel"
    fractions, pool = imp._fractions(model)
    assert fractions == {"fc/kernel": 0.2, "out/kernel": 0.1, "late/kernel": 0.3,
                         "aux/kernel": 0.1}
    assert pool == ["fc/kernel"]


def test_global_pool_is_explicit_membership():
    rng = np.random.default_rng(0)
    weights = {k: rng.normal(size=(10, 10)) * scale for k, scale in
               (("a", 1.0), ("b", 3.0), ("c", 0.01))}
    masks = {k: np.ones((10, 10), dtype=np.float32) for k in weights}
    got = prune_surviving(weights, masks, 0.5, "global", pool=["a", "b"])
    # c has the smallest weights of all, yet it is pruned alone: exactly half of it
    assert int(got["c"].sum()) == 100 - count_zeros(100, 0.5) == 50
    assert int(got["a"].sum() + got["b"].sum()) == 200 - count_zeros(200, 0.5) == 100
    assert int(got["a"].sum()) < 50 < int(got["b"].sum())
    pooled_all = prune_surviving(weights, masks, 0.5, "global")
    assert int(pooled_all["c"].sum()) == 0 and int(pooled_all["b"].sum()) > 50
    with pytest.raises(ValueError, match=r"pooled weights have fractions \[0.2, 0.5\]; pass "
                                         r"pool= with the keys that share one fraction"):
        prune_surviving(weights, masks, {"a": 0.5, "b": 0.2, "c": 0.5}, "global")
    with pytest.raises(ValueError, match=r"pool names unknown weights \['z'\]"):
        prune_surviving(weights, masks, 0.5, "global", pool=["a", "z"])


def test_imp_global_scope_prunes_pinned_layers_on_their_own():
    imp = _imp(levels=2, fraction=0.5, layer_fractions={"late": 0.5}, scope="global")
    rows = imp.run()
    assert [r["level"] for r in rows] == [0, 1]
    remaining = imp.timings[1]["layer_remaining"]
    # pinned at the pool's own rate, yet pruned alone: exactly half of it
    assert remaining["late/kernel"] == 0.5
    sizes = {"fc/kernel": 64 * 20, "out/kernel": 200, "aux/kernel": 300}
    alive = sum(round(remaining[k] * n) for k, n in sizes.items())
    assert alive == sum(sizes.values()) - count_zeros(sum(sizes.values()), 0.5) == 890
    assert sorted(remaining[k] for k in sizes) != [0.5, 0.5, 0.5]  # one threshold, not three


def _depthwise_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    x = keras.layers.Conv2D(4, 1, name="pw")(x)
    outputs = keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x))
    return keras.Model(inputs, outputs)


def test_unprunable_layers_are_treated_alike_by_sparsify_and_sparsity_distribution():
    model = _depthwise_model()
    message = (r"trainable weights but tfmot cannot prune them: dw \(DepthwiseConv2D\).*"
               r"list it in dense_layers to leave it dense")
    with pytest.raises(ValueError, match=message):
        tfl.sparsity_distribution(model, 0.5, "uniform")
    with pytest.raises(ValueError, match=message):
        tfl.sparsify(model, 0.5, "uniform")
    for dense in (["dw"], ["DepthwiseConv2D"]):
        shares = tfl.sparsity_distribution(model, 0.5, "erk", dense_layers=dense)
        sparse = tfl.sparsify(model, 0.5, "erk", dense_layers=dense, seed=0)
        assert list(shares) == ["pw", "head"]
        got = {k.split("/")[0]: 1 - m.sum() / m.size for k, m in tfl.get_masks(sparse).items()}
        assert got == pytest.approx(shares, abs=1.0 / 8)
