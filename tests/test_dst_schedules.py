"""Drop-fraction schedules (tf_lottery.dst.schedules): values, numpy/TF parity, errors."""
import math

import gin
import numpy as np
import pytest

from tf_lottery._keras import tf
from tf_lottery.dst import RigL, schedules


def test_cosine_values():
    alpha, end = 0.3, 1000
    assert schedules.cosine(0, alpha, end) == pytest.approx(0.3)
    assert schedules.cosine(250, alpha, end) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert schedules.cosine(500, alpha, end) == pytest.approx(0.15)
    assert schedules.cosine(750, alpha, end) == pytest.approx(0.15 * (1 + math.cos(3 * math.pi / 4)))
    assert schedules.cosine(1000, alpha, end) == pytest.approx(0.0, abs=1e-12)
    assert schedules.cosine(5000, alpha, end) == pytest.approx(0.0, abs=1e-12)  # clipped
    assert schedules.cosine(-10, alpha, end) == pytest.approx(0.3)


def test_linear_and_constant_values():
    assert schedules.linear(0, 0.5, 100) == pytest.approx(0.5)
    assert schedules.linear(25, 0.5, 100) == pytest.approx(0.375)
    assert schedules.linear(100, 0.5, 100) == pytest.approx(0.0)
    assert schedules.linear(200, 0.5, 100) == pytest.approx(0.0)
    assert schedules.constant(0, 0.2, 100) == 0.2
    assert schedules.constant(10 ** 6, 0.2, 100) == 0.2


@pytest.mark.parametrize("name", schedules.DECAYS)
def test_numpy_and_tensorflow_agree(name):
    fn = schedules.get(name)
    steps = np.arange(0, 1201, 37)
    expected = fn(steps, 0.3, 1000)
    assert isinstance(expected, np.ndarray) and expected.shape == steps.shape
    got = fn(tf.constant(steps, tf.int64), 0.3, 1000)
    assert tf.is_tensor(got) and got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-7)
    # scalar tensors and in-graph use
    graph_fn = tf.function(lambda s: fn(s, 0.3, 1000))
    assert float(graph_fn(tf.constant(400, tf.int64))) == pytest.approx(fn(400, 0.3, 1000),
                                                                         rel=1e-5)


def test_callback_uses_schedule():
    assert RigL(end_step=1000).drop_fraction(500) == pytest.approx(0.15)
    assert RigL(end_step=1000, alpha=0.5, decay="linear").drop_fraction(500) == pytest.approx(0.25)
    assert RigL(end_step=1000, decay="constant").drop_fraction(999) == pytest.approx(0.3)
    custom = RigL(end_step=10, decay=lambda step, alpha, end: alpha * 0.5)
    assert custom.drop_fraction(3) == pytest.approx(0.15)


def test_unknown_decay_and_bad_alpha():
    with pytest.raises(ValueError, match="unknown drop-fraction decay"):
        schedules.get("exponential")
    with pytest.raises(ValueError, match="unknown drop-fraction decay"):
        RigL(decay="step")
    for alpha in (0, 0.0, -0.1, 1.01, 2):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            schedules.check_alpha(alpha)
    with pytest.raises(TypeError):
        schedules.check_alpha("a lot")
    assert schedules.check_alpha(1) == 1.0


def test_gin_configurable():
    # a scoped binding: leaves the global gin config of other tests alone
    gin.parse_config("test_dst_schedules/tf_lottery.dst.cosine.alpha = 0.5\n"
                     "test_dst_schedules/tf_lottery.dst.RigL.delta_t = 7")
    with gin.config_scope("test_dst_schedules"):
        assert schedules.cosine(0, end_step=10) == pytest.approx(0.5)
        assert RigL().delta_t == 7
    assert schedules.cosine(0, end_step=10) == pytest.approx(0.3)
    assert RigL().delta_t == 100
