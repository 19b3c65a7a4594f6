"""Scenarios of one mask-update callback over several ``fit`` calls, shared by the tf_keras
tests (test_dst_fit_calls.py) and the Keras 3 suite (keras3_suite/suite_dst.py, which finds
this folder through tests/conftest.py): the caller passes its Keras module, model and data.
Not a test file."""
import pytest


def stale_steps_are_traced_again(keras, model, x, y, method, loss, metric, batch_size=8):
    """The default end_step follows each fit's length, so a second, longer fit updates
    until its own end with its own drop fractions (its steps traced again for it); after
    a fit that raised, a new compile with the same optimizer and ``metric`` is the one
    trained with. ``model``: compiled, ``x`` holds 4 batches; ``method``: RigL with
    ``delta_t=2`` and the default ``end_step``. Returns the last fit's History."""
    def fit(epochs, callbacks):
        return model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False,
                         verbose=0, callbacks=callbacks)

    fit(1, [method])  # end_step 3: an update at 2
    fit(4, [method])  # steps 5-20, end_step 12
    assert [r["step"] for r in method.history] == [2, 6, 8, 10, 12]
    for record in method.history[1:]:  # the drop fraction of the second fit's schedule
        assert record["drop_fraction"] == pytest.approx(method.drop_fraction(record["step"]))
    assert method.history[-2]["drop_fraction"] > 0.01  # (step 10 of 12)

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        fit(1, [method, Interrupt()])
    model.compile(model.optimizer, loss, metrics=[metric])  # (Keras 3: the wrapper left)
    history = fit(1, [method])
    assert metric in history.history
    return history
