"""tfl.MaskedLayer: layer coverage, zeros kept by every optimizer, serialisation."""
import numpy as np
import pytest

import tf_lottery as tfl
from conftest import build_tiny_model
from tf_lottery._keras import keras, tf, tfmot
from tf_lottery.masking.selection import count_zeros
from tf_lottery.masking.wrapper import MaskedLayer, unmasked_forward


class PrunableDense(keras.layers.Dense, tfmot.sparsity.keras.PrunableLayer):
    """A user layer that tells tfmot which weights to prune."""

    def get_prunable_weights(self):
        return [self.kernel]


class DenseSubclass(keras.layers.Dense):
    """Not in tfmot's registry (it matches exact classes) and not a PrunableLayer."""


class HiddenWeight(keras.layers.Layer, tfmot.sparsity.keras.PrunableLayer):
    """Keeps its prunable weight in a list, where MaskedLayer cannot swap it."""

    def build(self, input_shape):
        self.kernels = [self.add_weight("k", (int(input_shape[-1]), 3))]

    def call(self, inputs):
        return tf.matmul(inputs, self.kernels[0])

    def get_prunable_weights(self):
        return [self.kernels[0]]


def _masked_zeros_are_exact(model):
    """Asserts every masked entry of every masked weight is exactly 0; returns #zeros."""
    zeros = 0
    for layer in tfl.masked_layers(model):
        for weight, mask in layer.masked_weights:
            w, m = weight.numpy(), mask.numpy()
            assert np.all(w[m == 0] == 0.0), weight.name
            zeros += int(np.sum(m == 0))
    return zeros


# --------------------------------------------------------------------------- layer coverage

def _model(inputs, layer, outputs=None):
    return keras.Model(inputs, layer(inputs) if outputs is None else outputs, name="m")


def _mha_model():
    inputs = keras.Input((5, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="layer")(inputs, inputs)
    return keras.Model(inputs, outputs)


LAYERS = {
    # name: (model builder, input shape / ("int", shape, vocab), [(weight, shape)])
    "dense": (lambda: _model(keras.Input((6,)), keras.layers.Dense(5, name="layer")),
              (6,), [("kernel", (6, 5))]),
    "conv1d": (lambda: _model(keras.Input((10, 3)), keras.layers.Conv1D(4, 3, name="layer")),
               (10, 3), [("kernel", (3, 3, 4))]),
    "conv2d": (lambda: _model(keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, name="layer")),
               (6, 6, 2), [("kernel", (3, 3, 2, 3))]),
    "conv3d": (lambda: _model(keras.Input((4, 4, 4, 1)),
                              keras.layers.Conv3D(2, 3, name="layer")),
               (4, 4, 4, 1), [("kernel", (3, 3, 3, 1, 2))]),
    "conv2d_transpose": (lambda: _model(keras.Input((4, 4, 2)),
                                        keras.layers.Conv2DTranspose(3, 3, name="layer")),
                         (4, 4, 2), [("kernel", (3, 3, 3, 2))]),
    "conv3d_transpose": (lambda: _model(keras.Input((3, 3, 3, 2)),
                                        keras.layers.Conv3DTranspose(2, 2, name="layer")),
                         (3, 3, 3, 2), [("kernel", (2, 2, 2, 2, 2))]),
    "separable_conv2d": (lambda: _model(keras.Input((6, 6, 2)),
                                        keras.layers.SeparableConv2D(4, 3, name="layer")),
                         (6, 6, 2), [("pointwise_kernel", (1, 1, 2, 4))]),
    "embedding": (lambda: _model(keras.Input((5,), dtype="int32"),
                                 keras.layers.Embedding(20, 4, name="layer")),
                  ("int", (5,), 20), [("embeddings", (20, 4))]),
    "multi_head_attention": (_mha_model, (5, 8), [
        ("query_kernel", (8, 2, 4)), ("key_kernel", (8, 2, 4)), ("value_kernel", (8, 2, 4)),
        ("attention_output_kernel", (2, 4, 8))]),
    "lstm": (lambda: _model(keras.Input((5, 3)), keras.layers.LSTM(4, name="layer")),
             (5, 3), [("lstm_cell_kernel", (3, 16)), ("lstm_cell_recurrent_kernel", (4, 16))]),
    "prunable_layer": (lambda: _model(keras.Input((6,)), PrunableDense(5, name="layer")),
                       (6,), [("kernel", (6, 5))]),
}


def _inputs(spec, n=16, seed=0):
    rng = np.random.default_rng(seed)
    if spec[0] == "int":
        return rng.integers(0, spec[2], size=(n,) + spec[1]).astype("int32")
    return rng.normal(size=(n,) + spec).astype("float32")


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_coverage(kind):
    build, spec, expected = LAYERS[kind]
    keras.utils.set_random_seed(1)   # tf_keras initialisers ignore tf.random.set_seed alone
    model = build()
    x = _inputs(spec)
    sparse = tfl.sparsify(model, 0.5, "uniform", seed=0)

    wrapped = tfl.masked_layers(sparse)
    assert len(wrapped) == 1 and isinstance(wrapped[0], MaskedLayer)
    assert wrapped[0].name == "masked_layer_layer"
    assert wrapped[0].weight_names == [name for name, _ in expected]
    masks = tfl.get_masks(sparse)
    assert list(masks) == [f"layer/{name}" for name, _ in expected]
    for (name, shape), mask in zip(expected, masks.values()):
        assert mask.shape == shape and mask.dtype == np.float32
        assert int(np.sum(mask == 0)) == count_zeros(int(np.prod(shape)), 0.5)
    assert _masked_zeros_are_exact(sparse) == sum(
        count_zeros(int(np.prod(s)), 0.5) for _, s in expected)
    # only the prunable weights are masked: one mask per prunable weight, nothing else
    n_weights = len(model.get_layer("layer").weights)
    assert len(wrapped[0].weights) == n_weights + len(expected)
    assert len(wrapped[0].trainable_weights) == len(model.get_layer("layer").trainable_weights)

    before = {k: v.copy() for k, v in tfl.get_weights(sparse).items()}
    y = sparse.predict(x, verbose=0)
    sparse.compile(keras.optimizers.SGD(0.1), "mse")
    sparse.fit(x, np.random.default_rng(1).normal(size=y.shape), batch_size=8, epochs=1,
               verbose=0)
    assert _masked_zeros_are_exact(sparse) == sum(
        count_zeros(int(np.prod(s)), 0.5) for _, s in expected)
    after = tfl.get_weights(sparse)
    for key, mask in masks.items():
        changed = after[key] != before[key]
        assert not np.any(changed[mask == 0])
        # every kept entry trains (an embedding row only if its index occurs in x)
        kept = mask == 1
        if kind == "embedding":
            kept[np.setdiff1d(np.arange(20), x)] = False
            assert kept.sum() > 30
        if kind == "multi_head_attention" and key in ("layer/query_kernel", "layer/key_kernel"):
            # a (head, dim) whose key (query) column is all masked gives its query (key)
            # column exactly zero gradient: the attention scores do not depend on it
            other = masks["layer/key_kernel" if key == "layer/query_kernel"
                          else "layer/query_kernel"]
            kept &= other.any(axis=0)[None]
        if kind == "lstm":
            # a unit whose gate inputs are mostly masked has a tiny hidden state, and its
            # recurrent-kernel row can get updates below float32 resolution in two steps
            assert np.mean(changed[kept]) > 0.9, f"{key} did not train"
        else:
            assert np.all(changed[kept]), f"{key} did not train"

    plain = tfl.strip(sparse)
    assert not tfl.masked_layers(plain)
    np.testing.assert_array_equal(plain.predict(x, verbose=0), sparse.predict(x, verbose=0))


def test_separable_conv_depthwise_kernel_is_not_masked():
    keras.utils.set_random_seed(0)
    model = LAYERS["separable_conv2d"][0]()
    sparse = tfl.sparsify(model, 0.9, "uniform", seed=0)
    layer = sparse.get_layer("masked_layer_layer").layer
    assert np.count_nonzero(layer.depthwise_kernel.numpy()) == 3 * 3 * 2
    assert np.count_nonzero(layer.pointwise_kernel.numpy()) == 8 - count_zeros(8, 0.9) == 1


@pytest.mark.parametrize("layer", [keras.layers.DepthwiseConv2D(3, name="dw"),
                                   DenseSubclass(3, name="dw")])
def test_unsupported_layers_raise_unless_dense(layer):
    inputs = keras.Input((6, 6, 2))
    x = layer(inputs)
    outputs = keras.layers.Dense(4, name="head")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    weights = model.get_weights()
    for _ in range(2):  # a first failed attempt must not change the outcome of a second
        with pytest.raises(ValueError, match=rf"dw \({type(layer).__name__}\).*"
                                             r"PrunableLayer.*dense_layers"):
            tfl.sparsify(model, 0.5)
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    sparse = tfl.sparsify(model, 0.5, "uniform", dense_layers=["dw"], seed=0)
    assert [layer.layer.name for layer in tfl.masked_layers(sparse)] == ["head"]
    assert np.count_nonzero(sparse.get_layer("dw").weights[0].numpy()) == \
        np.prod(sparse.get_layer("dw").weights[0].shape)


def test_masked_layer_rejects_unsupported_and_double_wrapping():
    with pytest.raises(ValueError, match="supported layer"):
        MaskedLayer(DenseSubclass(3))
    wrapped = MaskedLayer(keras.layers.Dense(3, name="d"))
    with pytest.raises(ValueError, match="'masked_layer_d' is already a MaskedLayer; wrap a "
                                         "layer once"):
        MaskedLayer(wrapped)


def test_weight_not_stored_as_attribute():
    layer = MaskedLayer(HiddenWeight(name="hidden"))
    with pytest.raises(ValueError, match=r"'hidden' \(HiddenWeight\) returns a prunable weight.*"
                                         r"Store each prunable weight as an attribute"):
        layer.build((None, 4))


# ---------------------------------------------------------------------------- the wrapper

def _wrapped_dense(units=3, inputs=4, **kwargs):
    layer = MaskedLayer(keras.layers.Dense(units, name="d", **kwargs))
    layer.build((None, inputs))
    return layer


def test_masks_are_built_one_per_prunable_weight():
    layer = _wrapped_dense()
    assert len(layer.masked_weights) == 1
    weight, mask = layer.masked_weights[0]
    assert weight is layer.layer.kernel
    assert mask.name.split("/")[-1] == "kernel_mask:0"
    assert mask.shape == (4, 3) and mask.dtype == tf.float32
    assert not mask.trainable
    assert mask.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    np.testing.assert_array_equal(mask.numpy(), np.ones((4, 3)))
    assert layer.trainable_weights == [layer.layer.kernel, layer.layer.bias]
    assert layer.non_trainable_weights == [mask]
    assert layer.pruning_vars == []


def test_set_masks_zeroes_weights_and_call_uses_the_mask():
    layer = _wrapped_dense()
    layer.layer.kernel.assign(np.arange(1, 13, dtype="float32").reshape(4, 3))
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype="float32")
    layer.set_masks([mask])
    np.testing.assert_array_equal(layer.get_masks()[0], mask)
    np.testing.assert_array_equal(layer.layer.kernel.numpy(),
                                  np.arange(1, 13).reshape(4, 3) * mask)
    x = np.eye(4, dtype="float32")
    np.testing.assert_array_equal(layer(x).numpy(), np.arange(1, 13).reshape(4, 3) * mask)
    # the gradient of every masked entry is exactly 0, of the others the dense one
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * np.arange(12, dtype="float32").reshape(4, 3))
    grad = tape.gradient(loss, layer.layer.kernel).numpy()
    np.testing.assert_array_equal(grad, np.arange(12).reshape(4, 3) * mask)
    # a write behind the wrapper's back is masked as it lands
    layer.layer.kernel.assign(np.ones((4, 3)))
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), mask)
    np.testing.assert_array_equal(layer(x).numpy(), mask)   # bias is 0
    np.testing.assert_array_equal(layer(x, training=True).numpy(), mask)
    # an increment is not hooked: predictions stay right, apply_masks re-zeroes
    layer.layer.kernel.assign_add(np.ones((4, 3)))
    np.testing.assert_array_equal(layer(x).numpy(), 2 * mask)
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), 1 + mask)
    layer.layer.kernel.assign(np.ones((4, 3)))
    layer.apply_masks()
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), mask)
    np.testing.assert_array_equal(layer(x).numpy(), mask)
    # set_weights zeroes the masked entries too
    layer.set_weights([np.full((4, 3), 2.0), np.zeros(3)])
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), 2 * mask)
    np.testing.assert_array_equal(layer.get_weights()[0], 2 * mask)


def test_masked_entries_get_zero_gradient_unless_unmasked_forward():
    layer = _wrapped_dense()
    mask = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype="float32")
    layer.set_masks([mask])
    x = tf.constant(np.arange(8, dtype="float32").reshape(2, 4) + 1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    grad = tape.gradient(loss, layer.layer.kernel).numpy()
    # d sum(x @ (W * M)) / dW = (column sums of x) * M
    expected = np.repeat(np.array([[6.0], [8.0], [10.0], [12.0]]), 3, axis=1)
    np.testing.assert_array_equal(grad, expected * mask)
    with unmasked_forward():
        with tf.GradientTape() as tape:
            out = layer(x)
            loss = tf.reduce_sum(out)
        np.testing.assert_array_equal(tape.gradient(loss, layer.layer.kernel).numpy(),
                                      expected)
    np.testing.assert_array_equal(out.numpy(), layer(x).numpy())


@pytest.mark.parametrize("masks,message", [
    ([np.ones((4, 3))] * 2, "expected 1 masks, got 2"),
    ([np.ones((3, 4))], r"has shape \(3, 4\), expected \(4, 3\)"),
    ([np.full((4, 3), 0.5)], "only 0s and 1s"),
])
def test_set_masks_bad_input_changes_nothing(masks, message):
    layer = _wrapped_dense()
    kernel = layer.layer.kernel.numpy()
    with pytest.raises(ValueError, match=message):
        layer.set_masks(masks)
    np.testing.assert_array_equal(layer.get_masks()[0], np.ones((4, 3)))
    np.testing.assert_array_equal(layer.layer.kernel.numpy(), kernel)


def test_set_masks_checks_every_mask_before_setting_any():
    inputs = keras.Input((5, 8))
    outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    layer = tfl.masked_layers(tfl.sparsify(keras.Model(inputs, outputs), 0.0, "uniform"))[0]
    weights = [w.numpy() for w, _ in layer.masked_weights]
    good = [np.zeros(m.shape) for m in layer.get_masks()]
    with pytest.raises(ValueError, match="only 0s and 1s"):
        layer.set_masks(good[:3] + [np.full(good[3].shape, 2.0)])
    for mask, (weight, _), before in zip(layer.get_masks(), layer.masked_weights, weights):
        np.testing.assert_array_equal(mask, np.ones(mask.shape))
        np.testing.assert_array_equal(weight.numpy(), before)


def test_get_config_and_from_config():
    layer = _wrapped_dense(kernel_regularizer=keras.regularizers.l2(0.01))
    config = layer.get_config()
    assert config["name"] == "masked_layer_d"
    assert config["layer"]["class_name"] == "Dense"
    assert config["layer"]["config"]["units"] == 3
    assert "pruning_schedule" not in config
    clone = MaskedLayer.from_config(config)
    clone.build((None, 4))
    assert isinstance(clone, MaskedLayer) and clone is not layer
    assert clone.name == "masked_layer_d" and clone.layer.name == "d"
    assert clone.layer.kernel_regularizer.get_config() == {"l2": pytest.approx(0.01)}
    assert [m.shape for m in clone.get_masks()] == [(4, 3)]
    # a config written by tfmot's get_config (with a schedule) is accepted too
    MaskedLayer.from_config(dict(config, pruning_schedule={"class_name": "ConstantSparsity"}))
    # generic Keras (de)serialisation, with and without the scope
    with tfl.custom_object_scope():
        revived = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(revived) is MaskedLayer
    assert keras.layers.serialize(layer)["registered_name"] == "tf_lottery>MaskedLayer"
    assert tfl.custom_objects() == {"MaskedLayer": MaskedLayer,
                                    "tf_lottery>MaskedLayer": MaskedLayer}


# ---------------------------------------------------------------------------- optimizers

def _regularised_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    l2 = keras.regularizers.l2(0.05)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv", kernel_regularizer=l2)(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="d1", kernel_regularizer=l2)(x)
    outputs = keras.layers.Dense(10, name="d2", kernel_regularizer=l2)(x)
    return keras.Model(inputs, outputs)


def _mixed_model():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_tiny_model()
    outputs = keras.layers.Activation("linear", dtype="float32")(model.output)
    return keras.Model(model.input, outputs)


OPTIMIZERS = {
    "sgd_momentum": (build_tiny_model, lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    "sgd_nesterov": (build_tiny_model,
                     lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True)),
    "adam": (build_tiny_model, lambda: keras.optimizers.Adam(0.01)),
    "adamw": (build_tiny_model, lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1)),
    "sgd_l2_regulariser": (_regularised_model, lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    "mixed_float16_adam": (_mixed_model, lambda: keras.optimizers.Adam(0.01)),
}


@pytest.fixture
def float32_policy_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_optimizers_keep_masked_weights_zero(kind, tiny_data, float32_policy_after):
    build, optimizer = OPTIMIZERS[kind]
    model = build()
    sparse = tfl.sparsify(model, 0.8, "erk", seed=0)
    # ERK at 80%: conv dense, d1 0.83236 -> 3836 zeros, d2 0.42394 -> 136 zeros
    expected_zeros = 0 + 3836 + 136
    assert _masked_zeros_are_exact(sparse) == expected_zeros
    before = {k: v.copy() for k, v in tfl.get_weights(sparse).items()}
    sparse.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if kind == "mixed_float16_adam":
        assert isinstance(sparse.optimizer, keras.mixed_precision.LossScaleOptimizer)
        assert sparse.get_layer("masked_layer_d1").layer.kernel.dtype == tf.float32
        assert sparse.get_layer("masked_layer_d1").masked_weights[0][1].dtype == tf.float32
        assert sparse.get_layer("masked_layer_d1").compute_dtype == "float16"
    if kind == "sgd_l2_regulariser":
        assert len(sparse.losses) == 3
    x, y = tiny_data
    history = sparse.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))

    assert _masked_zeros_are_exact(sparse) == expected_zeros
    masks = tfl.get_masks(sparse)
    after = tfl.get_weights(sparse)
    for key, mask in masks.items():
        assert np.count_nonzero(after[key]) == np.count_nonzero(mask), key
        changed = after[key] != before[key]
        assert not np.any(changed[mask == 0]), key
        # the model trained (kept entries of a ReLU unit dead on all 32 inputs do not move)
        assert np.mean(changed[mask == 1]) > 0.5, key
    # the same zeros through get_weights(): model and layer level
    kernels = [w for w in sparse.get_weights() if w.ndim >= 2]
    # conv kernel, conv mask, d1 kernel, d1 mask, d2 kernel, d2 mask
    assert [int(np.sum(w == 0)) for w in kernels] == [0, 0, 3836, 3836, 136, 136]
    layer = sparse.get_layer("masked_layer_d1")
    assert int(np.sum(layer.get_weights()[0] == 0)) == 3836
    assert int(np.sum(tfl.strip(sparse).get_layer("d1").get_weights()[0] == 0)) == 3836


# ------------------------------------------------------------------------- serialisation

def _trained_sparse_model(tiny_data):
    sparse = tfl.sparsify(build_tiny_model(), 0.9, "erk", seed=0)
    sparse.compile(keras.optimizers.Adam(0.01),
                   keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    sparse.fit(*tiny_data, batch_size=16, epochs=1, verbose=0)
    return sparse


def _assert_same_model(a, b, x):
    np.testing.assert_array_equal(a.predict(x, verbose=0), b.predict(x, verbose=0))
    masks_a, masks_b = tfl.get_masks(a), tfl.get_masks(b)
    assert list(masks_a) == list(masks_b) == ["conv/kernel", "d1/kernel", "d2/kernel"]
    for key in masks_a:
        np.testing.assert_array_equal(masks_a[key], masks_b[key])
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert [type(layer) for layer in b.layers] == [type(layer) for layer in a.layers]


def test_model_get_config_round_trip(tiny_data):
    sparse = _trained_sparse_model(tiny_data)
    clone = keras.Model.from_config(sparse.get_config(), custom_objects=tfl.custom_objects())
    clone.set_weights(sparse.get_weights())
    _assert_same_model(sparse, clone, tiny_data[0])


@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_save_and_load_round_trip(fmt, tiny_data, tmp_path):
    sparse = _trained_sparse_model(tiny_data)
    path = str(tmp_path / ("model.h5" if fmt == "h5" else "model"))
    sparse.save(path)
    with tfl.custom_object_scope():
        loaded = keras.models.load_model(path)
    _assert_same_model(sparse, loaded, tiny_data[0])
    assert [type(layer) for layer in loaded.layers].count(MaskedLayer) == 3
    assert _masked_zeros_are_exact(loaded) == 12 + 4226 + 229
    if fmt == "h5":
        # the loaded model trains on with its masks (optimizer state restored from h5)
        loaded.fit(*tiny_data, batch_size=16, epochs=1, verbose=0)
        assert _masked_zeros_are_exact(loaded) == 12 + 4226 + 229
        np.testing.assert_array_equal(tfl.get_masks(loaded)["d1/kernel"],
                                      tfl.get_masks(sparse)["d1/kernel"])


def test_load_with_custom_objects_argument(tiny_data, tmp_path):
    sparse = tfl.sparsify(build_tiny_model(), 0.5, "uniform", seed=3)
    sparse.save(str(tmp_path / "m.h5"))
    loaded = keras.models.load_model(str(tmp_path / "m.h5"), custom_objects=tfl.custom_objects())
    _assert_same_model(sparse, loaded, tiny_data[0])


def test_checkpoint_restore(tiny_data, tmp_path):
    sparse = _trained_sparse_model(tiny_data)
    saved_weights = sparse.get_weights()
    saved_masks = tfl.get_masks(sparse)
    path = tf.train.Checkpoint(model=sparse).save(str(tmp_path / "ckpt"))
    # change both masks and weights, then restore
    tfl.set_masks(sparse, {k: np.ones_like(m) for k, m in saved_masks.items()})
    sparse.set_weights([w + 1.0 for w in saved_weights])
    assert _masked_zeros_are_exact(sparse) == 0
    tf.train.Checkpoint(model=sparse).restore(path).assert_consumed()
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(mask, saved_masks[key])
    for before, after in zip(saved_weights, sparse.get_weights()):
        np.testing.assert_array_equal(before, after)
    # and into a fresh model of the same structure
    fresh = tfl.sparsify(build_tiny_model(seed=5), 0.5, "uniform", seed=9)
    tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
    _assert_same_model(sparse, fresh, tiny_data[0])


def _mixed_kinds_model():
    """Nested Sequential (Conv2D), Dense, MultiHeadAttention (query != value), LSTM."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    body = keras.Sequential([keras.layers.Conv2D(2, 3, name="c"),
                             keras.layers.Flatten(name="f")], name="body")
    q = keras.layers.Reshape((9, 8))(keras.layers.Dense(72, name="d")(body(inputs)))
    v = keras.layers.Reshape((18, 4))(q)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(q, v)
    return keras.Model(inputs, keras.layers.LSTM(3, name="lstm")(x))


MIXED_KEYS = ["c/kernel", "d/kernel", "mha/query_kernel", "mha/key_kernel", "mha/value_kernel",
              "mha/attention_output_kernel", "lstm/lstm_cell_kernel",
              "lstm/lstm_cell_recurrent_kernel"]


@pytest.mark.parametrize("how", ["from_config", "h5"])
def test_round_trip_keeps_weight_keys_for_every_layer_kind(how, tiny_data, tmp_path):
    # A layer rebuilt by its wrapper (from_config, h5) creates its weights under the
    # wrapper's name scope ("masked_layer_mha/query/kernel"); the keys, the mask variable
    # names and a lazily built MultiHeadAttention must come out as in the original.
    sparse = tfl.sparsify(_mixed_kinds_model(), 0.5, "erk", seed=0)
    assert list(tfl.get_masks(sparse)) == MIXED_KEYS
    if how == "h5":
        sparse.save(str(tmp_path / "m.h5"))
        with tfl.custom_object_scope():
            loaded = keras.models.load_model(str(tmp_path / "m.h5"))
    else:
        loaded = keras.Model.from_config(sparse.get_config(), custom_objects=tfl.custom_objects())
        loaded.set_weights(sparse.get_weights())
    assert list(tfl.get_masks(loaded)) == list(tfl.get_weights(loaded)) == MIXED_KEYS
    assert [w.name.split("/")[-1] for layer in tfl.masked_layers(loaded)
            for w in layer.non_trainable_weights if "mask" in w.name] == [
        "kernel_mask:0", "kernel_mask:0", "query_kernel_mask:0", "key_kernel_mask:0",
        "value_kernel_mask:0", "attention_output_kernel_mask:0", "lstm_cell_kernel_mask:0",
        "lstm_cell_recurrent_kernel_mask:0"]
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(tfl.get_masks(loaded)[key], mask)
    x = tiny_data[0][:4]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), sparse.predict(x, verbose=0))
    assert tfl.sparsity_report(loaded) == tfl.sparsity_report(sparse)
    # a checkpoint of the original restores into the reloaded model, masks included
    tfl.set_masks(loaded, {k: np.ones_like(m) for k, m in tfl.get_masks(loaded).items()})
    path = tf.train.Checkpoint(model=sparse).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(model=loaded).restore(path).assert_existing_objects_matched()
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(tfl.get_masks(loaded)[key], mask)


def _dense_pair(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(5, name="d")(inputs))
    return tfl.sparsify(model, 0.5, seed=seed)


@pytest.mark.parametrize("how", ["model_set_weights", "h5", "checkpoint", "mask_first"])
def test_weight_and_mask_written_in_either_order_keep_the_written_values(tmp_path, how):
    """Loading a sparse model's weights and masks into a model with other masks gives
    exactly the source's masked weights: entries the new mask switches on keep the
    written value, whichever of weight and mask lands first."""
    source, target = _dense_pair(1), _dense_pair(2)
    assert not np.array_equal(tfl.get_masks(source)["d/kernel"], tfl.get_masks(target)["d/kernel"])
    if how == "model_set_weights":
        target.set_weights(source.get_weights())
    elif how == "h5":
        source.save_weights(str(tmp_path / "w.h5"))
        target.load_weights(str(tmp_path / "w.h5"))
    elif how == "checkpoint":
        path = tf.train.Checkpoint(model=source).save(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=target).restore(path).assert_existing_objects_matched()
    else:
        (s_layer,), (t_layer,) = tfl.masked_layers(source), tfl.masked_layers(target)
        (s_kernel, s_mask), (t_kernel, t_mask) = s_layer.masked_weights[0], t_layer.masked_weights[0]
        t_mask.assign(s_mask)
        t_kernel.assign(s_kernel)
    expected = tfl.get_weights(source)["d/kernel"]
    assert np.count_nonzero(expected) > 0
    np.testing.assert_array_equal(tfl.get_weights(target)["d/kernel"], expected)
    (layer,) = tfl.masked_layers(target)
    np.testing.assert_array_equal(layer.masked_weights[0][0].numpy(), expected)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    np.testing.assert_array_equal(target(x).numpy(), source(x).numpy())


def test_a_weight_changed_after_a_write_is_not_reverted_by_a_later_mask_write():
    model = _dense_pair(3)
    (layer,) = tfl.masked_layers(model)
    kernel, mask = layer.masked_weights[0]
    kernel.assign(np.ones(kernel.shape, "float32"))      # masked as it lands
    model.compile(keras.optimizers.SGD(0.1), "mse")
    model.fit(np.ones((4, 6), "float32"), np.zeros((4, 5), "float32"), verbose=0)
    trained = kernel.numpy()
    assert not np.array_equal(trained, mask.numpy())
    mask.assign(np.ones(mask.shape, "float32"))          # switches every entry on
    np.testing.assert_array_equal(kernel.numpy(), trained)  # no stale value comes back
