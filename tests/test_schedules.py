"""WarmupStepDecay: hand-computed values, tf.function, serialisation."""
import numpy as np
import pytest

from tf_lottery._keras import keras, tf
from tf_lottery.training.schedules import WarmupStepDecay


def _lr(schedule, step):
    return float(schedule(tf.constant(step, tf.int64)))


def test_warmup_then_decay_after_warmup():
    # base 0.03, 20K warmup iterations, x0.1 at 25K and 30K.
    s = WarmupStepDecay(0.03, warmup_steps=20000, boundaries=(25000, 30000))
    for step, lr in [(0, 0.0), (10000, 0.015), (20000, 0.03), (24999, 0.03), (25000, 0.003),
                     (29999, 0.003), (30000, 0.0003), (10 ** 6, 0.0003)]:
        assert _lr(s, step) == pytest.approx(lr, rel=1e-5), step


def test_frankle_carbin_resnet20_boundary_at_end_of_warmup():
    # Frankle & Carbin's ResNet-20: 0.03, warmup 20K, x0.1 at 20K and 25K (absolute):
    # the rate peaks just before 20K and is already decayed at 20K.
    s = WarmupStepDecay(0.03, warmup_steps=20000, boundaries=(20000, 25000))
    assert _lr(s, 0) == 0.0
    assert _lr(s, 10000) == pytest.approx(0.015)
    assert _lr(s, 19999) == pytest.approx(0.03 * 19999 / 20000)
    assert _lr(s, 20000) == pytest.approx(0.003)
    assert _lr(s, 24999) == pytest.approx(0.003)
    assert _lr(s, 25000) == pytest.approx(0.0003)


def test_no_warmup_and_other_factor():
    s = WarmupStepDecay(0.1, boundaries=(30000, 60000), decay_factor=0.2)  # RigL WRN-22-2
    assert _lr(s, 0) == pytest.approx(0.1)
    assert _lr(s, 30000) == pytest.approx(0.02)
    assert _lr(s, 60000) == pytest.approx(0.004)
    assert _lr(WarmupStepDecay(0.5), 123) == pytest.approx(0.5)


def test_in_tf_function_and_optimizer():
    s = WarmupStepDecay(0.1, warmup_steps=10, boundaries=(20,))
    values = tf.function(lambda steps: tf.map_fn(s, steps, fn_output_signature=tf.float32))(
        tf.constant([0, 5, 10, 20], tf.int64))
    np.testing.assert_allclose(values.numpy(), [0.0, 0.05, 0.1, 0.01], rtol=1e-6)
    var = tf.Variable(1.0)
    optimizer = keras.optimizers.SGD(learning_rate=s)
    optimizer.build([var])
    optimizer.iterations.assign(5)
    optimizer.apply_gradients([(tf.constant(1.0), var)])  # var -= lr(5) * 1
    assert float(var) == pytest.approx(1.0 - 0.05)


def test_config_round_trip():
    s = WarmupStepDecay(0.03, 20000, (20000, 25000), 0.1, name="lr")
    config = s.get_config()
    assert config == {"base_lr": 0.03, "warmup_steps": 20000, "boundaries": [20000, 25000],
                      "decay_factor": 0.1, "name": "lr"}
    again = WarmupStepDecay.from_config(config)
    for step in (0, 7000, 20000, 26000):
        assert _lr(again, step) == _lr(s, step)
    restored = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(s))
    assert isinstance(restored, WarmupStepDecay) and restored.get_config() == config
    optimizer = keras.optimizers.SGD.from_config(keras.optimizers.SGD(s).get_config())
    assert optimizer.get_config()["learning_rate"]["config"] == config


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="increasing"):
        WarmupStepDecay(0.1, boundaries=(5, 3))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupStepDecay(0.1, warmup_steps=-1)


def test_gin_configurable():
    import gin
    try:
        gin.parse_config(["WarmupStepDecay.warmup_steps = 10",
                          "WarmupStepDecay.boundaries = (20,)"])
        s = WarmupStepDecay(0.1)
        assert (s.warmup_steps, s.boundaries) == (10, [20])
    finally:
        gin.clear_config()
