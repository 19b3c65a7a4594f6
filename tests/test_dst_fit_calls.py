"""One DST callback over several tf_keras ``fit`` calls: the step count other callbacks
move, the traced train step reused while it is valid and traced again when it is not
(masks of other counts, the schedule of a longer fit, a new compile after a fit that
raised). The Keras 3 twins are in tests/keras3_suite/suite_dst.py."""
import numpy as np

import tf_lottery as tfl
from tf_lottery._keras import keras
from tf_lottery.dst import RigL
from dst_tiny import BATCH, _data, _sparse
from fit_scenarios import stale_steps_are_traced_again


def test_history_follows_a_step_count_other_callbacks_move():
    """A later callback moves the step count when training begins (as BackupAndRestore
    does when it resumes) and again when the second epoch begins: the history still has
    every update, at multiples of delta_t of the moved count."""
    model = _sparse()

    class Move(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.model.optimizer.iterations.assign(3)

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.iterations.assign(13)

    callback = RigL(delta_t=2, end_step=30, total_steps=40)
    model.fit(*_data(4), batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
              callbacks=[callback, Move()])
    assert int(model.optimizer.iterations.numpy()) == 17
    assert [r["step"] for r in callback.history] == [4, 6, 14, 16]


def test_fit_again_reuses_the_traced_step_and_takes_the_masks_set_between():
    """A second fit with the same callback reuses the first one's traced train function
    (tracing it again cost about 1 s per fit call for LeNet-300-100) and trains from masks
    set between the two fits: with the same counts through the same function, with other
    counts through one traced again for the new top_k bounds, and after a new compile."""
    model = _sparse()
    callback = RigL(delta_t=2, end_step=10, total_steps=24)
    functions = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                functions.append(self.model.train_function)

    def fit():
        model.fit(*_data(4), batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                  callbacks=[callback, Probe()])

    def assert_zero_where_masked():
        for layer in tfl.masked_layers(model):
            for weight, mask in layer.masked_weights:
                assert np.count_nonzero(weight.numpy()[mask.numpy() == 0]) == 0, weight.name

    fit()  # steps 1-4: updates at 2, 4
    assert callback.update_traces == 1
    rng = np.random.default_rng(4)
    same = {k: rng.permutation(m.ravel()).reshape(m.shape)
            for k, m in tfl.get_masks(model).items()}
    tfl.set_masks(model, same)
    fit()  # steps 5-8: 6, 8
    assert functions[1] is functions[0] and callback.update_traces == 1
    assert {k: int(m.sum()) for k, m in tfl.get_masks(model).items()} == {
        k: int(m.sum()) for k, m in same.items()}
    assert_zero_where_masked()
    other = {k: (rng.random(m.shape) < 0.2).astype(np.float32) for k, m in same.items()}
    tfl.set_masks(model, other)
    fit()  # steps 9-12: 10
    assert callback.update_traces == 2 and functions[2] is not functions[1]
    assert callback.history[-1]["step"] == 10
    assert callback.history[-1]["active"] == {k: int(m.sum()) for k, m in other.items()
                                              if k in callback.history[-1]["active"]}
    assert_zero_where_masked()
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit()  # steps 13-16, after a new compile: traced again
    assert callback.update_traces == 3
    assert_zero_where_masked()


def test_no_reuse_of_what_a_fit_traced_once_it_is_stale():
    """The default end_step follows each fit's length, so a second, longer fit updates
    until its own end (traced again for it); after a fit that raised, a new compile with
    the same optimizer and a metric is the one trained with, during and after the fit
    (fit_scenarios.py, shared with the Keras 3 suite)."""
    model = _sparse()
    stale_steps_are_traced_again(
        keras, model, *_data(4), RigL(delta_t=2, alpha=0.5),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True), "accuracy",
        batch_size=BATCH)
    assert "accuracy" in model.fit(*_data(4), batch_size=BATCH, epochs=1, verbose=0).history
