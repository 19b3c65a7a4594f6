"""tfl.compact: disconnected units removed, outputs unchanged (Dense, Conv+BN, Flatten,
residual Add, Concatenate), constants of input-less units folded into the next bias."""
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = [0.3 * rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()]
        if isinstance(layer, keras.layers.BatchNormalization):
            values[-1] = np.abs(values[-1]) + 0.5  # moving variance
        if values:
            layer.set_weights(values)


def _kill(model, name, inputs=(), outputs=()):
    """Zeroes the masks of fan-in positions ``inputs`` and output units ``outputs``."""
    masks = tfl.get_masks(model)
    mask = masks[f"{name}/kernel"].copy()
    mask[..., list(inputs), :] = 0
    mask[..., list(outputs)] = 0
    masks[f"{name}/kernel"] = mask
    tfl.set_masks(model, masks)


def _check(model, x, expected):
    compacted, report = tfl.compact(model, return_report=True)
    want = np.asarray(model(x, training=False))
    got = np.asarray(compacted(x, training=False))
    assert got.shape == want.shape
    assert np.max(np.abs(got - want)) <= 1e-5
    assert {r["layer"]: (r["before"], r["after"]) for r in report} == expected
    assert not tfl.masked_layers(compacted)
    assert report.params_after < report.params_before
    return compacted


def test_dense_chain_folds_constants_through_batch_norm():
    inputs = keras.Input((10,))
    x = keras.layers.Dense(8, activation="relu", name="d1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(6, activation="tanh", name="d2", use_bias=False)(x)
    outputs = keras.layers.Dense(3, name="d3")(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "d1", outputs=[1, 4])       # no inputs: relu(bias) -> bn -> folded into d2
    _kill(sparse, "d2", inputs=[2, 5], outputs=[3])  # d1 units 2, 5 lose their outputs
    _kill(sparse, "d3", inputs=[0])
    x = np.random.default_rng(1).normal(size=(6, 10)).astype("float32")
    compacted = _check(sparse, x, {"d1": (8, 4), "d2": (6, 4)})
    assert compacted.get_layer("d2").use_bias  # turned on to hold d1's constants


def test_conv_bn_flatten_dense():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(5, 3, padding="valid", name="c1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(4, 1, padding="same", name="c2")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, name="d")(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "c1", outputs=[0, 3])
    _kill(sparse, "c2", inputs=[1], outputs=[0])  # c2 channel 0: constant through Flatten
    mask = tfl.get_masks(sparse)["d/kernel"].copy()
    mask[2::4] = 0  # every position of c2's channel 2 after Flatten
    tfl.set_masks(sparse, {"d/kernel": mask})
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype("float32")
    _check(sparse, x, {"c1": (5, 2), "c2": (4, 2)})


def test_same_padding_keeps_input_less_channels_it_cannot_fold():
    inputs = keras.Input((5, 5, 2))
    x = keras.layers.Conv2D(3, 1, name="c1")(inputs)
    outputs = keras.layers.Conv2D(2, 3, padding="same", name="c2")(x)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "c1", outputs=[0])
    compacted, report = tfl.compact(sparse, return_report=True)
    assert list(report) == []  # the border of a "same" conv sees 0, not the constant
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 2)).astype("float32")
    np.testing.assert_allclose(compacted(x), sparse(x), atol=1e-5)


def test_residual_add_removes_a_channel_only_when_every_branch_loses_it():
    inputs = keras.Input((8,))
    a = keras.layers.Dense(6, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(6, name="b")(a)
    s = keras.layers.Add()([a, b])
    outputs = keras.layers.Dense(2, name="head")(s)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "a", outputs=[0, 1])
    _kill(sparse, "b", inputs=[0, 1], outputs=[1, 4])
    # channel 1: a and b both input-less -> constant, folded; channel 4: a alive -> stays;
    # channel 0: b alive (b's unit 0 still has inputs) -> stays
    x = np.random.default_rng(3).normal(size=(4, 8)).astype("float32")
    _check(sparse, x, {"a": (6, 5), "b": (6, 5)})


def test_concatenate_maps_channels_to_each_branch():
    inputs = keras.Input((7,))
    a = keras.layers.Dense(4, activation="sigmoid", name="a")(inputs)
    b = keras.layers.Dense(3, activation="relu", name="b")(inputs)
    c = keras.layers.Concatenate()([a, b])
    outputs = keras.layers.Dense(2, name="head")(c)
    model = keras.Model(inputs, outputs)
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "a", outputs=[2])
    _kill(sparse, "head", inputs=[4 + 1, 0])  # b's unit 1 and a's unit 0 lose outputs
    x = np.random.default_rng(4).normal(size=(4, 7)).astype("float32")
    _check(sparse, x, {"a": (4, 2), "b": (3, 2)})


def test_outputs_and_unsupported_layers_keep_their_channels():
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1"),
                              keras.layers.LayerNormalization(),
                              keras.layers.Dense(3, name="d2")])
    _randomize(model)
    sparse = tfl.sparsify(model, 0.0, "uniform")
    _kill(sparse, "d1", outputs=[1])
    _kill(sparse, "d2", outputs=[0])
    compacted, report = tfl.compact(sparse, return_report=True)
    assert list(report) == []
    assert compacted.count_params() == model.count_params()
    with pytest.raises(TypeError, match="tf_keras Model"):
        tfl.compact("model")
