"""Keras 3 behavioural suite, run once per backend in its own process by tests/test_keras3.py
(``KERAS_BACKEND`` is fixed per process). Not named test_*.py: the main pytest process runs
tf_keras and must not collect it."""
import os

import keras
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery.keras3 import MaskedLayer, PrunableLayer
from tf_lottery.masking import distributions, selection

L = keras.layers
BACKEND = keras.config.backend()


def _np(v):
    return np.asarray(keras.ops.convert_to_numpy(v.value if hasattr(v, "value") else v))


def mlp(seed=0):
    """Dense 16 -> 32 -> 24 -> 4 (kernels 512, 768, 96)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    x = L.Dense(32, activation="relu", name="d1")(inputs)
    x = L.Dense(24, activation="relu", name="d2")(x)
    return keras.Model(inputs, L.Dense(4, name="d3")(x), name="mlp")


def data(n=64, shape=(16,), out=4, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n,) + shape).astype("float32"), rng.normal(size=(n, out)).astype(
        "float32")


def assert_masked_zero(model):
    for key, mask in tfl.get_masks(model).items():
        layer = [u for u in tfl.keras3.api._units(model) if u.key == key][0]
        value = _np(layer.weight)
        assert np.count_nonzero(value[mask == 0]) == 0, key


def test_dispatch_and_tf_keras_untouched():
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    if BACKEND == "tensorflow":
        import tensorflow as tf
        assert tf.keras.__version__.startswith("3.")
    sparse = tfl.sparsify(mlp(), 0.5, "uniform", seed=0)
    assert [type(layer) for layer in tfl.masked_layers(sparse)] == [MaskedLayer] * 3
    import tf_keras  # a tf_keras model in the same process goes to the tfmot path
    legacy = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(3, name="t")])
    legacy_sparse = tfl.sparsify(legacy, 0.5, "uniform", seed=0)
    assert [type(layer) for layer in tfl.masked_layers(legacy_sparse)] == [tfl.MaskedLayer]
    assert int(np.sum(tfl.get_masks(legacy_sparse)["t/kernel"] == 0)) == 6
    assert "TF_USE_LEGACY_KERAS" not in os.environ
    if BACKEND == "tensorflow":
        assert tf.keras.__version__.startswith("3.")


def test_exact_counts_uniform_and_erk():
    model = mlp()
    shapes = {"d1/kernel": (16, 32), "d2/kernel": (32, 24), "d3/kernel": (24, 4)}
    for method in ("uniform", "erk"):
        expected = distributions.distribute(shapes, 0.8, method)
        assert tfl.sparsity_distribution(model, 0.8, method, per_weight=True) == expected
        assert tfl.sparsity_distribution(model, 0.8, method) == pytest.approx(
            {k.split("/")[0]: v for k, v in expected.items()}, abs=1e-12)
        sparse = tfl.sparsify(model, 0.8, method, seed=3)
        masks = tfl.get_masks(sparse)
        for key, shape in shapes.items():
            size = int(np.prod(shape))
            assert int(np.sum(masks[key] == 0)) == selection.count_zeros(size, expected[key])
        rows = tfl.sparsity_report(sparse)
        assert rows[-1]["params"] == 512 + 768 + 96
        assert rows[-1]["active"] == sum(int(m.sum()) for m in masks.values())
        model = tfl.strip(sparse)
    erk = distributions.distribute(shapes, 0.8, "erk")
    assert erk["d3/kernel"] < erk["d1/kernel"]  # ERK keeps the small layer denser


OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(0.01),
    "adamw_ema": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.1, use_ema=True),
    "adagrad": lambda: keras.optimizers.Adagrad(0.05, initial_accumulator_value=0.1),
    "ftrl": lambda: keras.optimizers.Ftrl(0.05, initial_accumulator_value=0.1),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_masks_are_law_through_optimizers(name):
    x, y = data()
    sparse = tfl.sparsify(mlp(), 0.75, "erk", seed=0)
    optimizer = OPTIMIZERS[name]()
    sparse.compile(optimizer, "mse")
    sparse.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert_masked_zero(sparse)
    if name == "adamw_ema" and BACKEND == "jax":
        return  # Keras 3.15 on JAX leaves the EMA copies' buffers deleted after fit (a second
        # fit fails the same way without tf-lottery), so their state cannot be read or reset
    before = sparse.predict(x, verbose=0)
    # an outside write into masked entries does not change predictions ...
    layer = tfl.masked_layers(sparse)[0]
    kernel, mask = layer.masked_weights[0]
    kernel.assign(_np(kernel) + 5.0 * (1 - _np(mask)))
    np.testing.assert_allclose(sparse.predict(x, verbose=0), before, rtol=1e-5, atol=1e-6)
    # ... and a mask write turns entries off with their optimizer state reset
    rng = np.random.default_rng(7)
    new = {k: selection.random_mask(m.shape, 0.9, rng) for k, m in tfl.get_masks(sparse).items()}
    tfl.set_masks(sparse, new)
    assert_masked_zero(sparse)
    fill = 0.1 if name in ("adagrad", "ftrl") else 0.0
    for layer_ in tfl.masked_layers(sparse):
        for weight, mask_ in layer_.masked_weights:
            slots, fills = tfl.keras3.state.slots_of([optimizer], weight)
            assert len(slots) == {"sgd_momentum": 1, "adam": 2, "adamw_ema": 3,
                                  "adagrad": 1, "ftrl": 2}[name]
            assert fills.count(fill) >= 1  # accumulators reset to their initial value
            off = _np(mask_) == 0
            for slot, value in zip(slots, fills):
                assert value in (0.0, fill)
                np.testing.assert_array_equal(_np(slot)[off], np.float32(value))
    last = tfl.masked_layers(sparse)[-1].layer.bias  # always has a gradient (no relu after)
    last_before = _np(last)
    kernel.assign(_np(kernel) + 3.0 * (1 - _np(mask)))  # outside write undone by training
    sparse.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert_masked_zero(sparse)
    assert not np.array_equal(_np(last), last_before)  # it did train


def test_keras_save_load_round_trip(tmp_path):
    x, y = data()
    sparse = tfl.sparsify(mlp(), 0.7, "erk", seed=2)
    sparse.compile(keras.optimizers.Adam(0.01), "mse")
    sparse.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "m.keras")
    sparse.save(path)
    loaded = keras.saving.load_model(path)
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(tfl.get_masks(loaded)[key], mask)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), sparse.predict(x, verbose=0),
                               rtol=1e-6)
    assert_masked_zero(loaded)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_masked_zero(loaded)


def test_masks_are_saved_as_float32_and_load_from_any_backend():
    """Mask variables are bool on JAX and float32 elsewhere; what a layer saves is float32
    0/1 on every backend, and it loads float32 or bool values (a file from any backend),
    masking its weight as it lands."""
    sparse = tfl.sparsify(mlp(), 0.7, "erk", seed=2)
    layer = tfl.masked_layers(sparse)[0]
    (weight, mask), = layer.masked_weights
    assert keras.backend.standardize_dtype(mask.dtype) == ("bool" if BACKEND == "jax"
                                                           else "float32")
    store = {}
    layer.save_own_variables(store)
    assert list(store) == ["0"] and store["0"].dtype == np.float32
    np.testing.assert_array_equal(store["0"], tfl.get_masks(sparse)["d1/kernel"])
    weight.assign(np.ones(weight.shape, "float32"))
    flipped = 1.0 - store["0"]
    for value in (flipped, flipped.astype(bool)):
        layer.load_own_variables({"0": value})
        np.testing.assert_array_equal(tfl.get_masks(sparse)["d1/kernel"], flipped)
        np.testing.assert_array_equal(_np(weight), flipped)
    with pytest.raises(ValueError):
        layer.load_own_variables({"0": flipped, "1": flipped})


def test_strip_gives_plain_model_with_equal_predictions():
    x, _ = data()
    sparse = tfl.sparsify(mlp(), 0.9, "uniform", seed=4)
    kernel, mask = tfl.masked_layers(sparse)[1].masked_weights[0]
    kernel.assign(_np(kernel) + 2.0)  # a dense write behind the wrapper's back
    masks = tfl.get_masks(sparse)
    weights = tfl.get_weights(sparse)  # re-zeroes first
    assert set(weights) == set(masks)
    for key, value in weights.items():
        assert np.count_nonzero(value[masks[key] == 0]) == 0, key
    assert "total" in str(tfl.sparsity_report(sparse))
    stripped = tfl.strip(sparse)
    assert not tfl.masked_layers(stripped)
    assert all(not isinstance(layer, MaskedLayer) for layer in stripped.layers)
    np.testing.assert_array_equal(stripped.predict(x, verbose=0), sparse.predict(x, verbose=0))
    assert stripped.get_layer("d1").kernel.constraint is None
    total = tfl.sparsity_report(stripped)[-1]
    assert total["nonzeros"] == total["params"] - sum(
        selection.count_zeros(n, 0.9) for n in (512, 768, 96))


def _fit_one(model, x, y):
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


SHAPES = {"image": (8, 8, 2), "line": (8, 2), "volume": (4, 4, 4, 1)}


def _conv_model():
    """One model with an image, a line and a volume input: every conv kind, one compile."""
    inputs = {k: keras.Input(v, name=k) for k, v in SHAPES.items()}
    image = L.Conv2DTranspose(3, 3, name="conv2t")(L.Conv2D(3, 3, name="conv2")(inputs["image"]))
    image = L.Flatten()(L.SeparableConv2D(3, 3, name="sep2")(image))
    line = L.Conv1DTranspose(3, 3, name="conv1t")(L.Conv1D(3, 3, name="conv1")(inputs["line"]))
    line = L.Flatten()(L.SeparableConv1D(3, 3, name="sep1")(line))
    volume = L.Flatten()(L.Conv3DTranspose(2, 2, name="conv3t")(
        L.Conv3D(2, 2, name="conv3")(inputs["volume"])))
    outputs = L.Dense(4, name="dense")(L.Concatenate()([
        L.EinsumDense("ab,bc->ac", (4,), name="einsum")(image), line, volume]))
    return keras.Model(list(inputs.values()), outputs)


@pytest.mark.parametrize("kind", ["conv", "sequence"])
def test_layer_coverage(kind, tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    if kind == "sequence":
        inputs = keras.Input((6,), dtype="int32")
        e = L.Embedding(20, 8, name="emb")(inputs)
        a = L.MultiHeadAttention(2, 4, name="mha")(e, e)
        r = L.SimpleRNN(4, return_sequences=True, name="srnn")(a)
        r = L.GRU(4, return_sequences=True, name="gru")(r)
        outputs = L.Dense(4, name="dense")(L.LSTM(4, name="lstm")(r))
        model = keras.Model(inputs, outputs)
        x = rng.integers(0, 20, size=(16, 6)).astype("int32")
    else:
        model = _conv_model()
        x = [rng.normal(size=(16,) + v).astype("float32") for v in SHAPES.values()]
    y = rng.normal(size=(16, 4)).astype("float32")
    sparse = tfl.sparsify(model, 0.5, "uniform", seed=1)
    keys = set(tfl.get_masks(sparse))
    expected = {
        "conv": {"conv2/kernel", "conv2t/kernel", "sep2/pointwise_kernel", "einsum/kernel",
                 "conv1/kernel", "conv1t/kernel", "sep1/pointwise_kernel", "conv3/kernel",
                 "conv3t/kernel", "dense/kernel"},
        "sequence": {"emb/embeddings", "mha/query_kernel", "mha/key_kernel", "mha/value_kernel",
                     "mha/attention_output_kernel", "srnn/simple_rnn_cell_kernel",
                     "srnn/simple_rnn_cell_recurrent_kernel", "gru/gru_cell_kernel",
                     "gru/gru_cell_recurrent_kernel", "lstm/lstm_cell_kernel",
                     "lstm/lstm_cell_recurrent_kernel", "dense/kernel"},
    }[kind]
    assert keys == expected
    _fit_one(sparse, x, y)
    assert_masked_zero(sparse)
    predictions = sparse.predict(x, verbose=0)
    if kind == "sequence":  # MultiHeadAttention and RNN cells rebuilt by .keras loading
        path = os.path.join(str(tmp_path), "seq.keras")
        sparse.save(path)
        loaded = keras.saving.load_model(path)
        for key, mask in tfl.get_masks(sparse).items():
            np.testing.assert_array_equal(tfl.get_masks(loaded)[key], mask)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), predictions, rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(tfl.strip(sparse).predict(x, verbose=0), predictions,
                               rtol=1e-5, atol=1e-6)


class Scale(L.Layer, PrunableLayer):
    """Elementwise ``x * w`` with a prunable ``w``: the protocol on a custom layer."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w

    def get_prunable_weights(self):
        return [self.w]


def test_prunable_layer_protocol():
    inputs = keras.Input((10,))
    model = keras.Model(inputs, Scale(name="scale")(inputs))
    sparse = tfl.sparsify(model, 0.3, "uniform", seed=0)
    mask = tfl.get_masks(sparse)["scale/w"]
    assert int(np.sum(mask == 0)) == 3
    np.testing.assert_array_equal(sparse.predict(np.ones((1, 10), "float32"), verbose=0)[0], mask)


def test_bad_inputs_have_clear_errors():
    model = mlp()
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        tfl.sparsify(model, 1.0)
    with pytest.raises(ValueError, match="unknown distribution"):
        tfl.sparsify(model, 0.5, "gaussian")
    with pytest.raises(ValueError, match="not prunable layers"):
        tfl.sparsify(model, 0.5, dense_layers=["nope"])
    sparse = tfl.sparsify(model, 0.5, seed=0)
    with pytest.raises(ValueError, match="already sparsified"):
        tfl.sparsify(sparse, 0.5)
    with pytest.raises(ValueError, match="unknown weights"):
        tfl.set_masks(sparse, {"d9/kernel": np.ones((2, 2))})
    with pytest.raises(ValueError, match="only 0s and 1s"):
        tfl.set_masks(sparse, {"d1/kernel": np.full((16, 32), 2.0)})
    with pytest.raises(ValueError, match="has shape"):
        tfl.set_masks(sparse, {"d1/kernel": np.ones((3, 3))})
    inputs = keras.Input((6, 6, 2))
    depthwise = keras.Model(inputs, L.Dense(2)(L.Flatten()(L.DepthwiseConv2D(3)(inputs))))
    with pytest.raises(ValueError, match="DepthwiseConv2D.*dense_layers"):
        tfl.sparsify(depthwise, 0.5)
    assert tfl.get_masks(tfl.sparsify(depthwise, 0.5, dense_layers=["DepthwiseConv2D"], seed=0))
    with pytest.raises(ValueError, match="not prunable"):
        MaskedLayer(L.Dropout(0.5))

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)
    sub = Sub()
    sub(np.ones((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed"):
        tfl.sparsify(sub, 0.5)


def test_magnitude_and_global_masks_keep_largest_weights():
    model = mlp()
    values = {u.key: u.value() for u in tfl.keras3.api._units(model)}
    sparse = tfl.sparsify(model, 0.6, "uniform", mask_init="magnitude")
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(mask, selection.magnitude_mask(values[key], 0.6))
    model = tfl.strip(sparse)
    values = {u.key: u.value() for u in tfl.keras3.api._units(model)}
    sparse = tfl.sparsify(model, 0.7, "global", mask_init="magnitude")
    expected = selection.global_magnitude_masks(values, 0.7)
    for key, mask in tfl.get_masks(sparse).items():
        np.testing.assert_array_equal(mask, expected[key])
    with pytest.raises(ValueError, match="mask_init='magnitude'"):
        tfl.sparsify(model, 0.5, "global")


def test_set_masks_through_a_loss_scale_optimizer():
    x, y = data()
    sparse = tfl.sparsify(mlp(), 0.5, "uniform", seed=0)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01))
    sparse.compile(scaled, "mse")
    sparse.fit(x, y, epochs=1, batch_size=16, verbose=0)
    rng = np.random.default_rng(3)
    new = {k: selection.random_mask(m.shape, 0.8, rng) for k, m in tfl.get_masks(sparse).items()}
    tfl.set_masks(sparse, new, optimizer=scaled)  # the same optimizer twice: reset once
    assert_masked_zero(sparse)
    for layer in tfl.masked_layers(sparse):
        for weight, mask in layer.masked_weights:
            slots, fills = tfl.keras3.state.slots_of(tfl.keras3.state.live_optimizers(
                None, scaled), weight)
            assert len(slots) == 2 and fills == [0.0, 0.0]  # Adam's moments, in the inner one
            off = _np(mask) == 0
            for slot in slots:
                assert np.count_nonzero(_np(slot)[off]) == 0
                assert np.count_nonzero(_np(slot)[~off]) > 0  # kept entries keep their state
    sparse.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert_masked_zero(sparse)


@pytest.mark.parametrize("how", ["model_set_weights", "weights_h5", "mask_first", "increment"])
def test_outside_writes_are_masked_as_they_land_in_either_order(tmp_path, how):
    """Loading a sparse model's weights and masks into a model with other masks gives
    exactly the source's masked weights (entries the new mask switches on keep the written
    value, whichever of weight and mask lands first); an increment from outside, the one
    write not hooked, never reaches predictions and apply_masks re-zeroes it."""
    x, _ = data()
    source = tfl.sparsify(mlp(1), 0.5, "uniform", seed=1)
    target = tfl.sparsify(mlp(2), 0.5, "uniform", seed=2)
    (s_kernel, s_mask), (t_kernel, t_mask) = (tfl.masked_layers(m)[0].masked_weights[0]
                                              for m in (source, target))
    assert not np.array_equal(_np(s_mask), _np(t_mask))
    if how == "model_set_weights":
        target.set_weights(source.get_weights())
    elif how == "weights_h5":
        source.save_weights(str(tmp_path / "w.weights.h5"))
        target.load_weights(str(tmp_path / "w.weights.h5"))
    elif how == "mask_first":
        target.set_weights(source.get_weights())
        t_mask.assign(np.ones(t_mask.shape, "float32"))
        t_kernel.assign(np.ones(t_kernel.shape, "float32"))
        t_mask.assign(_np(s_mask))
        t_kernel.assign(_np(s_kernel))
    else:
        before = target.predict(x, verbose=0)
        t_kernel.assign_add(5.0 * (1 - _np(t_mask)))      # into masked entries only
        assert np.count_nonzero(_np(t_kernel)[_np(t_mask) == 0]) == int(np.sum(_np(t_mask) == 0))
        np.testing.assert_array_equal(target.predict(x, verbose=0), before)
        tfl.apply_masks(target)
        assert_masked_zero(target)
        return
    np.testing.assert_array_equal(_np(t_kernel), _np(s_kernel))
    assert np.count_nonzero(_np(t_kernel)) > 0
    np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)
