"""tfl.sparsity_distribution, sparsify, strip, sparsity_report, get/set_masks, bad input.

Expected numbers for the tiny model (conftest; conv 36, d1 4608, d2 320 parameters)
are worked by hand in tests/test_distributions.py; the zero counts below are
round(sparsity * params) of those values.
"""
from fractions import Fraction as F

import numpy as np
import pytest

import tf_lottery as tfl
from conftest import build_tiny_model
from tf_lottery._keras import keras, tf, tfmot
from tf_lottery.masking.selection import magnitude_mask
from tf_lottery.masking.wrapper import MaskedLayer

ERK_90 = {"conv": float(1 - F(2482, 1145) * F(11, 36)),     # 0.337652
          "d1": float(1 - F(2482, 1145) * F(11, 288)),      # 0.917206
          "d2": float(1 - F(2482, 1145) * F(21, 160))}      # 0.715491
ERK_90_ZEROS = {"conv": 12, "d1": 4226, "d2": 229}          # 12.16, 4226.49, 228.96


def _zeros(model):
    return {key.split("/")[0]: int(np.sum(mask == 0)) for key, mask in tfl.get_masks(model).items()}


def _snapshot(model):
    return ([id(layer) for layer in model.layers], [layer.name for layer in model.layers],
            [w.name for w in model.weights], [w.numpy().copy() for w in model.weights])


def _assert_unchanged(model, snapshot):
    ids, names, weight_names, values = _snapshot(model)
    assert (ids, names, weight_names) == snapshot[:3]
    for before, after in zip(snapshot[3], values):
        np.testing.assert_array_equal(before, after)


def _two_dense_model(a, b):
    """Input(2) -> Dense a (2x2, no bias) -> Dense b (2x2, no bias), kernels set explicitly."""
    inputs = keras.Input((2,))
    x = keras.layers.Dense(2, use_bias=False, name="a")(inputs)
    outputs = keras.layers.Dense(2, use_bias=False, name="b")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("a").set_weights([np.array(a, dtype="float32")])
    model.get_layer("b").set_weights([np.array(b, dtype="float32")])
    return model


# ----------------------------------------------------------------- sparsity_distribution

def test_sparsity_distribution_erk_by_hand(tiny_model):
    got = tfl.sparsity_distribution(tiny_model, 0.9)
    assert list(got) == ["conv", "d1", "d2"]
    assert got == pytest.approx(ERK_90, abs=1e-12)
    assert got["conv"] == pytest.approx(0.3376516, abs=1e-7)
    per_weight = tfl.sparsity_distribution(tiny_model, 0.9, per_weight=True)
    assert list(per_weight) == ["conv/kernel", "d1/kernel", "d2/kernel"]
    assert list(per_weight.values()) == list(got.values())


def test_sparsity_distribution_methods_and_pins(tiny_model):
    # forced dense: S = 0.8 -> conv dense, eps = 956.8 / 218
    eps = F(2392, 545)
    assert tfl.sparsity_distribution(tiny_model, 0.8, "erk") == pytest.approx(
        {"conv": 0.0, "d1": float(1 - eps * F(11, 288)), "d2": float(1 - eps * F(21, 160))},
        abs=1e-12)
    # ER: conv raw 5/4 -> dense at 90%, eps = 460.4 / 218
    eps = F(1151, 545)
    assert tfl.sparsity_distribution(tiny_model, 0.9, "er") == pytest.approx(
        {"conv": 0.0, "d1": float(1 - eps * F(11, 288)), "d2": float(1 - eps * F(21, 160))},
        abs=1e-12)
    assert tfl.sparsity_distribution(tiny_model, 0.9, "uniform") == pytest.approx(
        {"conv": 0.9, "d1": 0.9, "d2": 0.9}, abs=1e-15)
    # d2 pinned (dense or at 50%): eps = 0.1 * 4644 / (11 + 176) = 2322/935
    eps = F(2322, 935)
    free = {"conv": float(1 - eps * F(11, 36)), "d1": float(1 - eps * F(11, 288))}
    assert tfl.sparsity_distribution(tiny_model, 0.9, dense_layers=["d2"]) == pytest.approx(
        dict(free, d2=0.0), abs=1e-12)
    assert tfl.sparsity_distribution(tiny_model, 0.9, custom_sparsity={"d2": 0.5}) == \
        pytest.approx(dict(free, d2=0.5), abs=1e-12)
    # power 0: every raw density is 1 -> uniform
    assert tfl.sparsity_distribution(tiny_model, 0.9, erk_power_scale=0.0) == pytest.approx(
        {"conv": 0.9, "d1": 0.9, "d2": 0.9}, abs=1e-12)


def test_sparsity_distribution_multi_weight_layer_is_parameter_weighted():
    # LSTM(16/4 units) on 3 features: kernel (3, 16) 48 params, sum 19; recurrent (4, 16)
    # 64 params, sum 20; head Dense (4, 2) 8 params, sum 6. N = 120, S = 0.5 -> budget 60,
    # eps = 60 / (19 + 20 + 6) = 4/3. Densities: 4/3*19/48 = 19/36, 4/3*20/64 = 5/12,
    # head 4/3*6/8 = 1 (dense). LSTM: (48 * 17/36 + 64 * 7/12) / 112 = 60/112.
    inputs = keras.Input((5, 3))
    x = keras.layers.LSTM(4, name="lstm")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    got = tfl.sparsity_distribution(model, 0.5)
    assert got == pytest.approx({"lstm": 60 / 112, "head": 0.0}, abs=1e-12)
    per_weight = tfl.sparsity_distribution(model, 0.5, per_weight=True)
    assert per_weight == pytest.approx({"lstm/lstm_cell_kernel": 17 / 36,
                                        "lstm/lstm_cell_recurrent_kernel": 7 / 12,
                                        "head/kernel": 0.0}, abs=1e-12)
    # a layer name pins all of its weights
    assert tfl.sparsity_distribution(model, 0.5, "uniform", custom_sparsity={"lstm": 0.25},
                                     per_weight=True) == {
        "lstm/lstm_cell_kernel": 0.25, "lstm/lstm_cell_recurrent_kernel": 0.25,
        "head/kernel": 0.5}


def test_sparsity_distribution_on_sparsified_model_is_the_same(tiny_model):
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    assert tfl.sparsity_distribution(sparse, 0.9) == pytest.approx(ERK_90, abs=1e-12)


# ------------------------------------------------------------------------------ sparsify

@pytest.mark.parametrize("distribution,kwargs,expected", [
    ("uniform", {}, {"conv": 32, "d1": 4147, "d2": 288}),          # 32.4, 4147.2, 288
    ("erk", {}, ERK_90_ZEROS),
    ("er", {}, {"conv": 0, "d1": 4236, "d2": 231}),                # 4236.29, 231.30
    ("erk", {"dense_layers": ["d2"]}, {"conv": 9, "d1": 4171, "d2": 0}),   # 8.68, 4170.92
    ("erk", {"custom_sparsity": {"d2": 0.5}}, {"conv": 9, "d1": 4171, "d2": 160}),
    ("uniform", {"mask_init": "magnitude"}, {"conv": 32, "d1": 4147, "d2": 288}),
    ("erk", {"mask_init": "magnitude"}, ERK_90_ZEROS),
])
def test_sparsify_exact_zero_counts(tiny_model, distribution, kwargs, expected):
    sparse = tfl.sparsify(tiny_model, 0.9, distribution, seed=0, **kwargs)
    assert _zeros(sparse) == expected
    for row in tfl.sparsity_report(sparse)[:-1]:
        assert row["params"] - row["nonzeros"] == expected[row["layer"]]
    assert [type(layer).__name__ for layer in sparse.layers] == [
        "InputLayer", "MaskedLayer", "Flatten", "MaskedLayer", "MaskedLayer"]


def test_sparsify_magnitude_keeps_the_largest_per_layer(tiny_model):
    weights = {k: v.copy() for k, v in tfl.get_weights(tiny_model).items()}
    sparse = tfl.sparsify(tiny_model, 0.9, "erk", mask_init="magnitude")
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(mask, magnitude_mask(weights[key], ERK_90[key[:-7]]))
        magnitudes = np.abs(weights[key])
        assert magnitudes[mask == 1].min() > magnitudes[mask == 0].max()


def test_sparsify_global_magnitude_picks_the_globally_smallest():
    # a = [[1, 2], [3, 4]], b = [[0.5, 0.2], [0.1, 6]]: 8 weights, 50% -> 4 zeros, the
    # globally smallest 0.1, 0.2, 0.5 (all of b) and 1 (a): a loses 1, b loses 3.
    a, b = [[1, 2], [3, 4]], [[0.5, 0.2], [0.1, 6]]
    sparse = tfl.sparsify(_two_dense_model(a, b), 0.5, "global", mask_init="magnitude")
    masks = tfl.get_masks(sparse)
    np.testing.assert_array_equal(masks["a/kernel"], [[0, 1], [1, 1]])
    np.testing.assert_array_equal(masks["b/kernel"], [[0, 0], [0, 1]])
    np.testing.assert_array_equal(tfl.get_weights(sparse)["a/kernel"], [[0, 2], [3, 4]])
    np.testing.assert_array_equal(tfl.get_weights(sparse)["b/kernel"], [[0, 0], [0, 6]])
    # layer by layer (uniform magnitude) each layer loses 2 instead
    layerwise = tfl.sparsify(_two_dense_model(a, b), 0.5, "uniform", mask_init="magnitude")
    np.testing.assert_array_equal(tfl.get_masks(layerwise)["a/kernel"], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(tfl.get_masks(layerwise)["b/kernel"], [[1, 0], [0, 1]])
    # pinned layers stay out of the global pool
    pinned = tfl.sparsify(_two_dense_model(a, b), 0.5, "global", mask_init="magnitude",
                          dense_layers=["b"])
    np.testing.assert_array_equal(tfl.get_masks(pinned)["a/kernel"], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(tfl.get_masks(pinned)["b/kernel"], np.ones((2, 2)))
    pinned = tfl.sparsify(_two_dense_model(a, b), 0.5, "global", mask_init="magnitude",
                          custom_sparsity={"b": 0.25})
    np.testing.assert_array_equal(tfl.get_masks(pinned)["a/kernel"], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(tfl.get_masks(pinned)["b/kernel"], [[1, 1], [0, 1]])


def test_sparsify_global_on_tiny_model(tiny_model):
    weights = np.concatenate([np.abs(w).ravel() for w in tfl.get_weights(tiny_model).values()])
    sparse = tfl.sparsify(tiny_model, 0.9, "global", mask_init="magnitude")
    assert sum(_zeros(sparse).values()) == 4468          # round(0.9 * 4964) = round(4467.6)
    threshold = np.sort(weights)[4468]                   # the smallest kept magnitude
    for key, mask in tfl.get_masks(sparse).items():
        kept = np.abs(tfl.get_weights(tiny_model)[key])  # shared layers: masked ones are 0
        assert np.all(kept[mask == 1] >= threshold)


def test_sparsify_shares_layers_and_weights(tiny_model, tiny_data):
    sparse = tfl.sparsify(tiny_model, 0.9, seed=0)
    for name in ("conv", "d1", "d2"):
        wrapper = sparse.get_layer(f"masked_layer_{name}")
        assert isinstance(wrapper, MaskedLayer)
        assert wrapper.layer is tiny_model.get_layer(name)
        assert wrapper.masked_weights[0][0] is tiny_model.get_layer(name).kernel
    assert sparse.get_layer("flatten") is tiny_model.get_layer("flatten")
    # the input model now holds the zeros and computes the same function
    assert int(np.sum(tiny_model.get_layer("d1").kernel.numpy() == 0)) == 4226
    np.testing.assert_array_equal(sparse.predict(tiny_data[0], verbose=0),
                                  tiny_model.predict(tiny_data[0], verbose=0))


def test_sparsify_seed_reproducibility():
    first = tfl.get_masks(tfl.sparsify(build_tiny_model(), 0.9, seed=7))
    again = tfl.get_masks(tfl.sparsify(build_tiny_model(), 0.9, seed=7))
    other = tfl.get_masks(tfl.sparsify(build_tiny_model(), 0.9, seed=8))
    # seed=None follows keras.utils.set_random_seed (build_tiny_model calls it) ...
    fresh = [tfl.get_masks(tfl.sparsify(build_tiny_model(), 0.9)) for _ in range(2)]
    # ... and two draws in a row after one seeding differ
    models = [build_tiny_model() for _ in range(2)]
    unseeded = [tfl.get_masks(tfl.sparsify(m, 0.9)) for m in models]
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
        assert not np.array_equal(first[key], other[key])
        np.testing.assert_array_equal(fresh[0][key], fresh[1][key])
        assert not np.array_equal(unseeded[0][key], unseeded[1][key])
        assert np.sum(first[key] == 0) == np.sum(other[key] == 0) == ERK_90_ZEROS[key[:-7]]


def test_sparsify_nested_sequential_in_functional(tiny_data):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    body = keras.Sequential([keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(name="flat")], name="body")
    outputs = keras.layers.Dense(10, name="head")(body(inputs))
    model = keras.Model(inputs, outputs)
    sparse = tfl.sparsify(model, 0.5, "uniform", seed=0)
    assert [layer.name for layer in tfl.masked_layers(sparse)] == [
        "masked_layer_conv", "masked_layer_head"]
    assert isinstance(sparse.get_layer("body"), keras.Sequential)
    assert isinstance(sparse.get_layer("body").layers[0], MaskedLayer)
    assert _zeros(sparse) == {"conv": 18, "head": 720}
    sparse.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sparse.fit(*tiny_data, batch_size=16, epochs=1, verbose=0)
    weights = tfl.get_weights(sparse)
    assert [int(np.sum(w == 0)) for w in weights.values()] == [18, 720]
    plain = tfl.strip(sparse)
    assert not tfl.masked_layers(plain)
    assert [type(layer) for layer in plain.get_layer("body").layers] == [
        keras.layers.Conv2D, keras.layers.Flatten]
    np.testing.assert_array_equal(plain.predict(tiny_data[0], verbose=0),
                                  sparse.predict(tiny_data[0], verbose=0))


def test_sparsify_sequential_model():
    model = keras.Sequential([keras.layers.Dense(5, input_shape=(4,), name="a"),
                              keras.layers.Dense(3, name="b")])
    sparse = tfl.sparsify(model, 0.5, "uniform", seed=0)
    assert isinstance(sparse, keras.Sequential)
    assert [layer.name for layer in sparse.layers] == ["masked_layer_a", "masked_layer_b"]
    assert _zeros(sparse) == {"a": 10, "b": 8}     # 20 -> 10, 15 -> round(7.5) = 8
    x = np.ones((2, 4), dtype="float32")
    np.testing.assert_array_equal(sparse.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(tfl.strip(sparse), keras.Sequential)


# ---------------------------------------------------------------------------------- strip

def test_strip_bakes_in_zeros_and_keeps_outputs(tiny_model, tiny_data):
    sparse = tfl.sparsify(tiny_model, 0.9, seed=0)
    sparse.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sparse.fit(*tiny_data, batch_size=16, epochs=1, verbose=0)
    for plain in (tfl.strip(sparse), tfmot.sparsity.keras.strip_pruning(sparse)):
        assert [type(layer).__name__ for layer in plain.layers] == [
            "InputLayer", "Conv2D", "Flatten", "Dense", "Dense"]
        assert not any("mask" in w.name for w in plain.weights)
        assert len(plain.weights) == 6
        assert {n: int(np.sum(plain.get_layer(n).kernel.numpy() == 0))
                for n in ("conv", "d1", "d2")} == ERK_90_ZEROS
        assert plain.get_layer("d1") is tiny_model.get_layer("d1")
        np.testing.assert_array_equal(plain.predict(tiny_data[0], verbose=0),
                                      sparse.predict(tiny_data[0], verbose=0))
    unmasked = [dict(r, masked=False) for r in tfl.sparsity_report(sparse)]
    assert tfl.sparsity_report(tfl.strip(sparse)) == unmasked


def test_strip_reapplies_masks_after_a_write_behind_the_wrapper(tiny_model, tiny_data):
    sparse = tfl.sparsify(tiny_model, 0.9, seed=0)
    expected = sparse.predict(tiny_data[0], verbose=0)
    kernel = sparse.get_layer("masked_layer_d1").layer.kernel
    kernel.assign_add(tf.ones_like(kernel))   # an increment: the one write not hooked
    # the masked forward pass hides the write; strip must not let it leak
    assert int(np.sum(kernel.numpy() == 0)) == 0
    plain = tfl.strip(sparse)
    assert int(np.sum(plain.get_layer("d1").kernel.numpy() == 0)) == 4226
    np.testing.assert_array_equal(plain.predict(tiny_data[0], verbose=0),
                                  sparse.predict(tiny_data[0], verbose=0))
    assert not np.array_equal(plain.predict(tiny_data[0], verbose=0), expected)


def test_strip_plain_model_is_a_no_op(tiny_model, tiny_data):
    plain = tfl.strip(tiny_model)
    assert [layer.name for layer in plain.layers] == [layer.name for layer in tiny_model.layers]
    np.testing.assert_array_equal(plain.predict(tiny_data[0], verbose=0),
                                  tiny_model.predict(tiny_data[0], verbose=0))


# ------------------------------------------------------------------------ sparsity_report

def test_sparsity_report_rows_totals_and_table(tiny_model):
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    report = tfl.sparsity_report(sparse)
    assert isinstance(report, list) and len(report) == 4
    assert report[0] == {"layer": "conv", "weight": "kernel", "shape": [3, 3, 1, 4],
                         "params": 36, "nonzeros": 18, "active": 18, "sparsity": 0.5,
                         "masked": True}
    assert report[1] == {"layer": "d1", "weight": "kernel", "shape": [144, 32],
                         "params": 4608, "nonzeros": 2304, "active": 2304, "sparsity": 0.5,
                         "masked": True}
    assert report[2] == {"layer": "d2", "weight": "kernel", "shape": [32, 10],
                         "params": 320, "nonzeros": 160, "active": 160, "sparsity": 0.5,
                         "masked": True}
    assert report[3] == {"layer": "total", "weight": "", "shape": [], "params": 4964,
                         "nonzeros": 2482, "active": 2482, "sparsity": 0.5, "masked": True}
    assert str(report) == report.table() == (
        "layer  weight  shape    params  nonzeros  sparsity  mask\n"
        "--------------------------------------------------------\n"
        "conv   kernel  3x3x1x4      36        18    50.00%   yes\n"
        "d1     kernel  144x32    4,608     2,304    50.00%   yes\n"
        "d2     kernel  32x10       320       160    50.00%   yes\n"
        "--------------------------------------------------------\n"
        "total                    4,964     2,482    50.00%      ")


def test_sparsity_report_counts_every_prunable_weight_masked_or_not():
    """A layer left dense (pinned, or one tfmot cannot prune) is in the rows and the total:
    the total is the model's real sparsity, and unmasked rows say so."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)         # 27 weights, no mask
    x = keras.layers.Conv2D(40, 1, name="pw")(x)                   # 120 weights, 90% sparse
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, name="fc")(x)                 # 14,400, pinned dense
    model = keras.Model(inputs, outputs)
    sparse = tfl.sparsify(model, 0.9, "uniform", seed=0, dense_layers=("DepthwiseConv2D", "fc"))
    report = tfl.sparsity_report(sparse)
    assert [(r["layer"], r["params"], r["active"], r["masked"]) for r in report] == [
        ("dw", 27, 27, False), ("pw", 120, 12, True), ("fc", 14400, 14400, True),
        ("total", 14547, 14439, False)]
    assert report[-1]["sparsity"] == pytest.approx(108 / 14547)   # 0.74%, not 90%
    lines = report.table().splitlines()
    assert lines[2].split()[0] == "dw" and lines[2].split()[-1] == "no"
    assert lines[4].split()[0] == "fc" and lines[4].split()[-2:] == ["0.00%", "yes"]


def test_sparsity_report_erk_totals(tiny_model):
    report = tfl.sparsity_report(tfl.sparsify(tiny_model, 0.9, seed=0))
    assert [r["nonzeros"] for r in report] == [24, 382, 91, 497]
    assert report[-1]["sparsity"] == pytest.approx(4467 / 4964, abs=1e-15)
    assert "total                    4,964       497    89.99%"  # 4467/4964 in report.table()


def test_sparsity_report_counts_active_mask_entries(tiny_model):
    # a just-grown (RigL) weight is active but still 0: sparsity follows the mask
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    tfl.set_masks(sparse, {"d2/kernel": np.ones((32, 10))})
    row = tfl.sparsity_report(sparse)[2]
    assert (row["nonzeros"], row["active"], row["sparsity"]) == (160, 320, 0.0)
    assert tfl.sparsity_report(sparse)[-1]["sparsity"] == pytest.approx(1 - 2642 / 4964)


def test_sparsity_report_plain_model(tiny_model):
    report = tfl.sparsity_report(tiny_model)
    assert [(r["layer"], r["params"], r["nonzeros"], r["sparsity"]) for r in report] == [
        ("conv", 36, 36, 0.0), ("d1", 4608, 4608, 0.0), ("d2", 320, 320, 0.0),
        ("total", 4964, 4964, 0.0)]
    tiny_model.get_layer("d2").kernel.assign(np.zeros((32, 10)))
    assert tfl.sparsity_report(tiny_model)[-1]["sparsity"] == pytest.approx(320 / 4964)


# -------------------------------------------------------------- get/set masks and weights

def test_get_and_set_masks(tiny_model):
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    masks = tfl.get_masks(sparse)
    assert list(masks) == ["conv/kernel", "d1/kernel", "d2/kernel"]
    assert list(tfl.get_weights(sparse)) == list(tfl.get_weights(tiny_model)) == list(masks)
    new = np.zeros((32, 10))
    new[0, 0] = 1
    tfl.set_masks(sparse, {"d2/kernel": new})
    assert _zeros(sparse) == {"conv": 18, "d1": 2304, "d2": 319}
    assert int(np.count_nonzero(tfl.get_weights(sparse)["d2/kernel"])) == (
        1 if masks["d2/kernel"][0, 0] == 1 else 0)
    assert [layer.name for layer in tfl.masked_layers(sparse)] == [
        "masked_layer_conv", "masked_layer_d1", "masked_layer_d2"]
    assert tfl.masked_layers(tiny_model) == []


def test_set_masks_bad_input_changes_nothing(tiny_model):
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    snapshot = _snapshot(sparse)
    with pytest.raises(ValueError, match=r"unknown weights \['d3/kernel'\]; known: "
                                         r"\['conv/kernel', 'd1/kernel', 'd2/kernel'\]"):
        tfl.set_masks(sparse, {"d3/kernel": np.ones((2, 2))})
    # d1's mask is fine, d2's is not: neither is set
    with pytest.raises(ValueError, match=r"masked_layer_d2: mask for d2/kernel:0 has shape "
                                         r"\(10, 32\), expected \(32, 10\)"):
        tfl.set_masks(sparse, {"d1/kernel": np.zeros((144, 32)), "d2/kernel": np.ones((10, 32))})
    _assert_unchanged(sparse, snapshot)
    with pytest.raises(ValueError, match=r"model 'tiny' has no MaskedLayer; call tfl.sparsify"):
        tfl.get_masks(build_tiny_model())


# ------------------------------------------------------------------------------ bad input

class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.dense = keras.layers.Dense(3, name="dense")

    def call(self, inputs):
        return self.dense(inputs)


def _no_prunable_model():
    inputs = keras.Input((4,))
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs, name="no_prunable")


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((1.0,), {}, ValueError, r"sparsity must be in \[0, 1\).*got 1\.0; e\.g\. 0\.9 keeps 10%"),
    ((-0.1,), {}, ValueError, r"sparsity must be in \[0, 1\)"),
    (("high",), {}, TypeError, r"sparsity must be a number in \[0, 1\), got 'high'"),
    ((None,), {}, TypeError, r"sparsity must be a number"),
    ((0.5, "erdos"), {}, ValueError,
     r"unknown distribution 'erdos'; use one of \('uniform', 'er', 'erk', 'global'\)"),
    ((0.5,), {"mask_init": "zeros"}, ValueError,
     r"unknown mask_init 'zeros'; use one of \('random', 'magnitude', 'snip', 'grasp', "
     r"'synflow'\)"),
    ((0.5, "global"), {}, ValueError, r"distribution='global'.*pass mask_init='magnitude'"),
    ((0.5,), {"dense_layers": ["d3"]}, ValueError,
     r"name \['d3'\], which are not prunable layers of the model; prunable layers are "
     r"\['conv', 'd1', 'd2'\]"),
    ((0.5,), {"dense_layers": ["flatten"]}, ValueError, r"name \['flatten'\]"),
    ((0.5,), {"custom_sparsity": {"nope": 0.5}}, ValueError, r"name \['nope'\]"),
    ((0.5,), {"custom_sparsity": {"d1": 1.0}}, ValueError,
     r"custom sparsity of 'd1' must be in \[0, 1\)"),
    ((0.5,), {"custom_sparsity": {"d1": "x"}}, TypeError, r"custom sparsity of 'd1' must be"),
    ((0.5,), {"distribution": "er", "erk_power_scale": 2.0, "dense_layers": ["x"]},
     ValueError, r"\['x'\]"),
])
def test_sparsify_bad_input_raises_and_changes_nothing(tiny_model, args, kwargs, error,
                                                       message):
    snapshot = _snapshot(tiny_model)
    with pytest.raises(error, match=message):
        tfl.sparsify(tiny_model, *args, **kwargs)
    _assert_unchanged(tiny_model, snapshot)
    assert not any(isinstance(layer, MaskedLayer) for layer in tiny_model.layers)


@pytest.mark.parametrize("args,kwargs,error,message", [
    ((1.5,), {}, ValueError, r"sparsity must be in \[0, 1\)"),
    ((0.5, "erdos"), {}, ValueError, r"unknown sparsity distribution 'erdos'"),
    ((0.5,), {"dense_layers": ["d3"]}, ValueError, r"name \['d3'\]"),
    ((0.5,), {"custom_sparsity": {"d4": 0.1}}, ValueError, r"name \['d4'\]"),
    ((0.5,), {"custom_sparsity": {"d1": -1}}, ValueError, r"custom sparsity of 'd1'"),
])
def test_sparsity_distribution_bad_input(tiny_model, args, kwargs, error, message):
    snapshot = _snapshot(tiny_model)
    with pytest.raises(error, match=message):
        tfl.sparsity_distribution(tiny_model, *args, **kwargs)
    _assert_unchanged(tiny_model, snapshot)


def test_model_without_prunable_layers():
    model = _no_prunable_model()
    snapshot = _snapshot(model)
    for call in (lambda: tfl.sparsify(model, 0.5), lambda: tfl.sparsity_distribution(model, 0.5),
                 lambda: tfl.sparsity_report(model)):
        with pytest.raises(ValueError, match=r"model 'no_prunable' has no layer that tfmot can "
                                             r"prune.*PrunableLayer"):
            call()
    _assert_unchanged(model, snapshot)


def test_sparsify_twice(tiny_model):
    sparse = tfl.sparsify(tiny_model, 0.5, "uniform", seed=0)
    snapshot = _snapshot(sparse)
    with pytest.raises(ValueError, match=r"model 'tiny' is already sparsified; change its masks "
                                         r"with tfl.set_masks, or tfl.strip it first"):
        tfl.sparsify(sparse, 0.9)
    _assert_unchanged(sparse, snapshot)
    # a model with one layer already wrapped by hand is refused too
    inputs = keras.Input((4,))
    x = MaskedLayer(keras.layers.Dense(3, name="a"))(inputs)
    partly = keras.Model(inputs, keras.layers.Dense(2, name="b")(x), name="partly")
    with pytest.raises(ValueError, match="'partly' is already sparsified"):
        tfl.sparsify(partly, 0.5)


def test_subclassed_model():
    model = _Subclassed()
    model(np.zeros((1, 4), dtype="float32"))
    snapshot = _snapshot(model)
    for call in (lambda: tfl.sparsify(model, 0.5), lambda: tfl.strip(model)):
        with pytest.raises(TypeError, match=r"model 'subclassed' is a subclassed model.*"
                                            r"Sequential or functional API.*tfl.MaskedLayer"):
            call()
    _assert_unchanged(model, snapshot)
    # its layers can still be listed and measured
    assert tfl.sparsity_distribution(model, 0.5, "uniform") == {"dense": 0.5}


def test_not_a_model_and_unbuilt_model():
    for bad in (keras.layers.Dense(3), "model", None):
        with pytest.raises(TypeError, match="expected a tf_keras Model.*not Keras 3"):
            tfl.sparsify(bad, 0.5)
        with pytest.raises(TypeError, match="expected a tf_keras Model"):
            tfl.sparsity_distribution(bad, 0.5)
    unbuilt = keras.Sequential([keras.layers.Dense(3)], name="unbuilt")
    with pytest.raises(ValueError, match=r"model 'unbuilt' is not built: give its first layer an "
                                         r"input shape"):
        tfl.sparsify(unbuilt, 0.5)
    assert not unbuilt.built
