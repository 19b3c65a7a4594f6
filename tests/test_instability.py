"""Instability analysis: the barrier on hand-made paths, identical runs, exact ends."""
import pathlib

import gin
import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.lottery import instability as lmc
from tf_lottery.lottery.rewind import snapshot
from tf_lottery.training import datasets
from tf_lottery.training import train as training

# Two networks computing the same function with their hidden units swapped:
#   A: W1 = I, W2 = I;  B: W1 = P, W2 = P (P swaps the two units); both add bias [0, 0.1].
# On x = (1, 0) (label 0) and (0, 1) (label 1), logits are relu(x) W2 + b: both A and B are
# right (error 0). At alpha, W1 = W2 = (1 - alpha) I + alpha P, and x = (1, 0) has logits
# [(1 - a)^2 + a^2, 2 a (1 - a) + 0.1]: wrong only near a = 0.5 ([0.5, 0.6]), where
# x = (0, 1) gets [0.5, 0.6] and stays right. So 5 points give errors [0, 0, 0.5, 0, 0]
# (at a = 0.25: [0.625, 0.475], right) and the barrier is 0.5.
X = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
Y = np.array([0, 1], np.int32)


def _swap_net():
    inputs = keras.Input((2,))
    h = keras.layers.Dense(2, "relu", use_bias=False, name="h")(inputs)
    out = keras.layers.Dense(2, name="out", bias_initializer=keras.initializers.Constant(
        [0.0, 0.1]))(h)
    return tfl.sparsify(keras.Model(inputs, out), 0.0)


def test_barrier_of_a_hand_made_path_with_a_known_answer():
    model = _swap_net()
    eye, swap = np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)[::-1].copy()
    model.get_layer("masked_layer_h").layer.kernel.assign(eye)
    model.get_layer("masked_layer_out").layer.kernel.assign(eye)
    a = snapshot(model)
    model.get_layer("masked_layer_h").layer.kernel.assign(swap)
    model.get_layer("masked_layer_out").layer.kernel.assign(swap)
    b = snapshot(model)
    path = lmc.linear_path(model, a, b, (X, Y), points=5)
    assert path.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path.errors == [0.0, 0.0, 0.5, 0.0, 0.0]
    assert path.barrier == 0.5
    assert path.losses[0] == path.losses[-1]  # A and B compute the same function
    assert path.loss_barrier == pytest.approx(max(path.losses) - path.losses[0])
    assert path.loss_barrier > 0
    np.testing.assert_array_equal(model.get_layer("masked_layer_h").layer.kernel.numpy(), swap)
    assert lmc.linear_path(model, a, a, (X, Y), points=5).barrier == 0.0


def test_error_barrier_and_interpolation_ends():
    assert lmc.error_barrier([0.1, 0.4, 0.3]) == pytest.approx(0.2)
    assert lmc.error_barrier([0.2, 0.1, 0.2]) == pytest.approx(0.0)
    a, b = {"w": np.array([1.0, 3.0], np.float32)}, {"w": np.array([0.1, -2.0], np.float32)}
    np.testing.assert_array_equal(lmc.interpolate(a, b, 0.0)["w"], a["w"])
    np.testing.assert_array_equal(lmc.interpolate(a, b, 1.0)["w"], b["w"])
    np.testing.assert_allclose(lmc.interpolate(a, b, 0.5)["w"], [0.55, 0.5])
    with pytest.raises(ValueError, match="different architectures"):
        lmc.interpolate(a, {"v": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="at least its two ends"):
        lmc.error_barrier([0.1])


def _small_mlp():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(32, "relu", name="fc1")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


@pytest.fixture(scope="module")
def digits():
    return datasets.digits_split("train[:400]"), datasets.digits_split("test[:200]")


def _run(digits, **kwargs):
    train, test = digits
    args = dict(model_fn=_small_mlp, rewind_step="2it", train_data=train, test_data=test,
                optimizer_fn=lambda: keras.optimizers.SGD(0.1, momentum=0.9), iterations=30,
                batch_size=32, points=7)
    return lmc.instability(**dict(args, **kwargs))


def test_identical_data_orders_give_identical_networks_and_zero_barrier(digits):
    result = _run(digits, data_seeds=(5, 5))
    assert result.rewind_iteration == 2
    assert result.end_errors[0] == result.end_errors[1]
    assert len(set(result.path.errors)) == 1
    assert len(set(result.path.losses)) == 1 and result.path.loss_barrier == 0.0
    assert result.barrier == 0.0


def test_path_ends_reproduce_each_networks_own_error(digits):
    masks = {"fc1/kernel": np.zeros((64, 32), np.float32),
             "logits/kernel": np.ones((32, 10), np.float32)}
    masks["fc1/kernel"][:, :8] = 1.0
    result = _run(digits, masks=masks, rewind_step="1ep")
    assert result.rewind_iteration == 13  # ceil(400 / 32) iterations per epoch
    assert result.path.errors[0] == result.end_errors[0]
    assert result.path.errors[-1] == result.end_errors[1]
    assert result.end_errors[0] != result.end_errors[1]  # different data orders
    assert result.barrier == pytest.approx(max(result.path.errors) - np.mean(result.end_errors))
    assert result.barrier >= 0.0
    with pytest.raises(ValueError, match="past the end of training"):
        _run(digits, rewind_step="31it")


def test_a_given_start_replaces_training_to_k(digits):
    keras.utils.set_random_seed(0)
    theta_0 = snapshot(tfl.sparsify(_small_mlp(), 0.0))
    given = _run(digits, rewind_step=0, start=theta_0, seed=7)
    trained = _run(digits, rewind_step=0, seed=0)
    assert given.path.errors == trained.path.errors
    assert given.end_errors == trained.end_errors


def test_plot_instability_writes_a_png(tmp_path):
    path = lmc.Path([0.0, 1.0], [0.1, 0.1], 0.0)
    sweep = [lmc.Instability("0", 0, path, [0.1, 0.1]),
             lmc.Instability("10it", 10, path._replace(barrier=0.02), [0.1, 0.1])]
    target = tmp_path / "instability.png"
    lmc.plot_instability({"dense": sweep}, str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["instability.png"]


def test_data_order_callable_and_identical_seeds(digits):
    (x, y), _ = digits

    def order(seed):
        ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(400, seed=seed)
        return ds.batch(32).repeat()

    result = _run(digits, train_data=order, data_seeds=(3, 3), rewind_step=0, iterations=10)
    assert result.end_errors[0] == result.end_errors[1] and result.barrier == 0.0
    with pytest.raises(ValueError, match="in epochs"):
        _run(digits, train_data=order, rewind_step="1ep")


def test_experiment_writes_results_and_resumes_finished_points(tmp_path):
    config = pathlib.Path(__file__).parent.parent / "gin_configs" / \
        "digits_lenet300100_instability.gin"
    gin.clear_config()
    try:
        training.parse_gin([str(config)], ["train.max_steps = 3", "data.batch_size = 16"])
        run = tmp_path / "run"
        first = training.train(str(run))["instability"]
        assert [r["rewind_iteration"] for r in first] == [0, 1]
        assert {p.name for p in run.iterdir()} >= {"k_0.json", "k_1.json", "instability.json",
                                                   "instability.png", "tensorboard"}
        done = run / "k_1.json"
        done.write_text(done.read_text().replace(f'"barrier": {first[1]["barrier"]}',
                                                 '"barrier": 0.25'))
        again = training.train(str(run))["instability"]
        assert again[0] == first[0] and again[1]["barrier"] == 0.25  # read back, not re-run
        files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
        assert training.train(str(run))["instability"] == again
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == files
    finally:
        gin.clear_config()


def test_experiment_sweeps_the_levels_of_an_imp_run(tmp_path):
    from tf_lottery.lottery import results
    from tf_lottery.training import models

    imp = tmp_path / "imp"
    keras.utils.set_random_seed(0)
    net = tfl.sparsify(models.lenet_300_100(input_shape=(8, 8, 1), num_classes=10), 0.0)
    results.write_json(str(imp / "run.json"), {"rewind_step": "0", "levels": 3})
    results.write_arrays(str(imp / "rewind_point.npz"), snapshot(net))
    ones = tfl.get_masks(net)
    half = {k: np.where(np.arange(m.size).reshape(m.shape) % 2 == 0, 1.0, 0.0).astype(
        np.float32) for k, m in ones.items()}
    results.write_arrays(str(imp / "level_0" / "masks.npz"), ones)
    results.write_arrays(str(imp / "level_1" / "masks.npz"), half)  # level 2 unfinished
    config = pathlib.Path(__file__).parent.parent / "gin_configs" / \
        "digits_lenet300100_instability.gin"
    gin.clear_config()
    try:
        training.parse_gin([str(config)], ["train.max_steps = 2", "data.batch_size = 16",
                                           f"instability_experiment.imp_dir = '{imp}'"])
        rows = training.train(str(tmp_path / "run"))["instability"]
        assert [(r["level"], r["remaining"], r["rewind_iteration"]) for r in rows] == [
            (0, 1.0, 0), (1, 0.5, 0)]
        assert (tmp_path / "run" / "level_1.json").is_file()
        assert (tmp_path / "run" / "instability.png").is_file()
        with gin.unlock_config():
            gin.bind_parameter("instability_experiment.levels", [2])
        with pytest.raises(ValueError, match="level 2 of that IMP run is not finished"):
            training.train(str(tmp_path / "run2"))
    finally:
        gin.clear_config()
