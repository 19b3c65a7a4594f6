"""Identical masks on every worker: seed=None follows Keras' seed; two workers agree."""
import json
import os
import sys

import numpy as np

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.masking import agreement
from workers import run_workers

HERE = os.path.dirname(os.path.abspath(__file__))
HELPER = os.path.join(HERE, "mask_agreement_helper.py")
TIMEOUT = 150


def _mlp():
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="d2")(h))


def _draw(seed):
    keras.utils.set_random_seed(seed)
    model = _mlp()
    keras.utils.set_random_seed(seed)
    return tfl.get_masks(tfl.sparsify(model, 0.5))


def test_seed_none_follows_keras_set_random_seed():
    first, again, other = _draw(1), _draw(1), _draw(2)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_digest_is_exact_and_sees_one_entry():
    mask = np.zeros((50, 40), np.float32)
    mask[::3, ::7] = 1
    moved = mask.copy()
    moved[0, 0], moved[0, 1] = 0, 1  # same count, one entry moved
    a, b = (agreement._digest(tf.constant(m)).numpy() for m in (mask, moved))
    assert a.shape == (12,) and a[0] == mask.sum() % 65536
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, agreement._digest(tf.Variable(mask)).numpy())


def test_check_masks_agree_across_mirrored_replicas():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        model = tfl.sparsify(_mlp(), 0.5, seed=0)
    assert tfl.check_masks_agree(model) == tfl.check_masks_agree(tfl.sparsify(_mlp(), 0.5, seed=0))
    assert tfl.check_masks_agree(model) != tfl.check_masks_agree(tfl.sparsify(_mlp(), 0.5, seed=1))


def test_two_workers_seed_none_get_identical_masks(tmp_path):
    outs = [str(tmp_path / f"worker{index}.json") for index in range(2)]
    run_workers(lambda index: [sys.executable, HELPER, outs[index]], 2, TIMEOUT)
    chief, worker = (json.load(open(path)) for path in outs)
    assert (chief["task"], worker["task"]) == (0, 1)
    assert chief["replicas"] == worker["replicas"] == 2
    # unseeded and outside the strategy the two processes draw different masks ...
    assert chief["local_sha"] != worker["local_sha"]
    # ... in its scope, with seed=None, both hold the chief's masks
    assert chief["sha"] == worker["sha"]
    assert chief["digest"] == worker["digest"] and len(chief["digest"]) == 16
    # explicit seeds that differ by worker (above 2**32): every worker uses the chief's
    assert chief["explicit_sha"] == worker["explicit_sha"] == chief["chief_local_sha"]
    assert chief["kept"] == {"d1/kernel": 48, "d2/kernel": 32}
    assert worker["kept"]["d1/kernel"] in (47, 49)
    # one entry changed on worker 1 only: the check fails loudly on both workers
    for result in (chief, worker):
        assert result["error"] is not None and result["error"].startswith(
            "masks differ from replica 0's (the chief's): replica 1 (worker 1) on ['d1/kernel']")
