"""The lottery-ticket metric: validation every N iterations on held-out training data, the
early-stopping iteration (minimum validation loss) and the test accuracy there."""
import csv
import os

import numpy as np
import pytest

import tf_lottery as tfl  # noqa: F401  (selects tf_keras)
from tf_lottery._keras import keras
from tf_lottery.lottery import IterativeMagnitudePruning, results
from tf_lottery.lottery.evaluation import Evaluator, ValidationCurve
from tf_lottery.training import datasets
from tf_lottery.training import train as training

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def splits():
    """Train 200 / validation 40 (held out of the same 240 training digits) / test 120."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:200], y[:200]), (x[200:240], y[200:240]), (x[240:360], y[240:360])


def mlp():
    inp = keras.Input((64,))
    h = keras.layers.Dense(16, activation="relu", name="fc")(inp)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))


def sgd():
    return keras.optimizers.SGD(0.1, momentum=0.9)


def _numpy_scores(model, x, y):
    logits = model.predict(x, verbose=0).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y].mean(), float(np.mean(logits.argmax(1) == y))


def test_evaluator_matches_numpy_in_any_batching(splits):
    keras.utils.set_random_seed(0)
    model = mlp()
    x, y = splits[1]
    loss, accuracy = _numpy_scores(model, x, y)
    for batch_size in (None, 7):
        scores = Evaluator((x, y), LOSS, batch_size=batch_size)(model)
        assert scores["loss"] == pytest.approx(loss, rel=1e-5)
        assert scores["accuracy"] == accuracy
    import tensorflow as tf
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(9)
    assert Evaluator(dataset, LOSS)(model)["loss"] == pytest.approx(loss, rel=1e-5)
    one_hot = np.eye(10, dtype="float32")[y]
    scores = Evaluator((x, one_hot), keras.losses.CategoricalCrossentropy(from_logits=True))(model)
    assert scores["accuracy"] == accuracy and scores["loss"] == pytest.approx(loss, rel=1e-5)


def test_curve_points_and_best_weights(splits):
    keras.utils.set_random_seed(0)
    model = mlp()
    model.compile(sgd(), LOSS, metrics=["accuracy"])
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen[int(self.model.optimizer.iterations.numpy())] = self.model.get_weights()

    curve = ValidationCurve(7, Evaluator(splits[1], LOSS), every=3)
    x, y = splits[0]
    model.fit(x, y, batch_size=40, epochs=3, verbose=0, shuffle=False, callbacks=[Record(), curve])
    assert [p["iteration"] for p in curve.curve] == [3, 6, 7]  # every 3 and the last
    assert int(model.optimizer.iterations.numpy()) == 7  # stopped after 7 batches
    for point in curve.curve:
        probe = mlp()
        probe.set_weights(seen[point["iteration"]])
        loss, accuracy = _numpy_scores(probe, *splits[1])
        assert point["val_loss"] == pytest.approx(loss, rel=1e-5)
        assert point["val_accuracy"] == accuracy
    best = min(curve.curve, key=lambda p: p["val_loss"])
    assert curve.best is best
    for a, b in zip(curve.best_weights, seen[best["iteration"]]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="eval_every"):
        ValidationCurve(5, None, every=0)


def test_multi_step_executions_end_at_every_validation_point_and_stop(splits):
    x, y = splits[0]
    runs = {}
    for steps in (1, 50):
        keras.utils.set_random_seed(0)
        model = mlp()
        model.compile(sgd(), LOSS, steps_per_execution=steps)
        ends = []

        class Ends(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                ends.append(int(self.model.optimizer.iterations.numpy()))

        curve = ValidationCurve(11, Evaluator(splits[1], LOSS), every=3,
                                steps_per_execution=steps, stops=(5,))
        # 200 digits in batches of 40: 5 batches per epoch, so epochs end at 5 and 10 too
        model.fit(x, y, batch_size=40, epochs=3, verbose=0, shuffle=False,
                  callbacks=[curve, Ends()])
        runs[steps] = (ends, curve.curve, model.get_weights())
    assert runs[50][0] == [3, 5, 6, 9, 10, 11]  # validation points, the stop, epoch ends
    assert runs[1][0] == list(range(1, 12))
    assert [p["iteration"] for p in runs[50][1]] == [3, 6, 9, 11]
    assert runs[50][1] == runs[1][1]
    for a, b in zip(runs[50][2], runs[1][2]):
        np.testing.assert_array_equal(a, b)


def test_imp_reports_test_accuracy_at_the_early_stopping_iteration(splits, tmp_path):
    train, validation, test = splits
    weights_at = {}

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            weights_at.clear()
            Record.model_ = self.model

        def on_train_batch_end(self, batch, logs=None):
            weights_at[int(self.model.optimizer.iterations.numpy())] = self.model.get_weights()

    def fast():
        return keras.optimizers.SGD(0.8, momentum=0.9)

    imp = IterativeMagnitudePruning(
        mlp, train, test, fast, validation_data=validation, eval_every=2, epochs=4,
        batch_size=40, levels=2, output_dir=str(tmp_path / "run"), verbose=0,
        validation_note="digits [200:240], held out of the training digits",
        callbacks=[Record()])
    rows = imp.run()
    last = rows[-1]
    assert last["level"] == 1
    curve_iterations = list(range(2, 21, 2))  # 20 iterations, validated every 2
    iteration = last["early_stop_iteration"]
    assert iteration in curve_iterations
    assert iteration < 20  # so the early-stopping weights differ from the final ones
    model = Record.model_
    final = model.get_weights()
    val_losses = {}
    for it in curve_iterations:
        model.set_weights(weights_at[it])
        val_losses[it] = _numpy_scores(model, *validation)[0]
    assert iteration == min(val_losses, key=val_losses.get)
    assert last["early_stop_val_loss"] == pytest.approx(val_losses[iteration], rel=1e-5)
    model.set_weights(weights_at[iteration])
    assert last["early_stop_test_accuracy"] == pytest.approx(_numpy_scores(model, *test)[1])
    model.set_weights(final)
    assert last["test_accuracy"] == pytest.approx(_numpy_scores(model, *test)[1])
    for a, b in zip(final, weights_at[20]):  # the early-stopping test left the weights alone
        np.testing.assert_array_equal(a, b)

    folder = tmp_path / "run"
    summary = results.read_json(str(folder / "summary.json"))
    assert summary["validation"] == {
        "data": "digits [200:240], held out of the training digits", "eval_every": 2}
    with open(folder / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:7] == ["level", "kind", "remaining", "test_accuracy",
                                  "early_stop_iteration", "early_stop_test_accuracy",
                                  "early_stop_val_loss"]
    assert int(table[-1]["early_stop_iteration"]) == iteration
    assert float(table[-1]["early_stop_test_accuracy"]) == pytest.approx(
        last["early_stop_test_accuracy"])


def test_without_validation_data_there_is_no_early_stopping_figure(splits):
    train, _, test = splits
    imp = IterativeMagnitudePruning(mlp, train, test, sgd, epochs=1, batch_size=40,
                                    levels=1, verbose=0)
    row = imp.run()[0]
    assert row["early_stop_iteration"] is None and row["early_stop_test_accuracy"] is None
    assert 0.0 <= row["test_accuracy"] <= 1.0
    with pytest.raises(ValueError, match="eval_every"):
        IterativeMagnitudePruning(mlp, train, test, sgd, eval_every=0)


def test_digits_validation_is_held_out_of_the_training_split():
    import gin
    gin.clear_config()
    try:
        gin.parse_config(["data.name = 'digits'", "data.train_split = 'train[:90%]'",
                          "data.validation_split = 'train[90%:]'"])
        loaded = training.data()
        with pytest.raises(ValueError, match="comes from the test split"):
            training.data(validation_split="test[:50%]")
    finally:
        gin.clear_config()
    x_train, y_train, x_test, y_test = datasets.load_digits_arrays()
    assert len(loaded.train[0]) == 1131 and len(loaded.validation[0]) == 126
    np.testing.assert_array_equal(np.concatenate([loaded.train[0], loaded.validation[0]]),
                                  x_train)
    np.testing.assert_array_equal(loaded.test[0], x_test)
    np.testing.assert_array_equal(datasets.digits_split("train[1131:]")[1], y_train[1131:])
    with pytest.raises(ValueError, match="sliced like"):
        datasets.digits_split("validation")
