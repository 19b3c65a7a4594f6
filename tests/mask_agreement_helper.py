"""Subprocess side of tests/test_mask_agreement.py (not collected by pytest).

    TF_CONFIG=... python mask_agreement_helper.py OUT.json

One worker of a two-worker MultiWorkerMirroredStrategy on localhost. Each worker seeds
numpy differently (as two unseeded processes would differ), then:

- sparsifies a model outside the strategy (no broadcast): its masks differ by worker;
- sparsifies a model built in the strategy's scope with ``seed=None``: the masks must be
  the chief's on both workers, and ``tfl.check_masks_agree`` passes;
- sparsifies with different explicit seeds per worker in the scope: the chief's wins;
- worker 1 alone flips one mask entry: ``check_masks_agree`` must raise on both.
"""
import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def _build(keras):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(4, name="d2")(h))


def _sha(masks):
    digest = hashlib.sha256()
    for key in sorted(masks):
        digest.update(key.encode() + np.ascontiguousarray(masks[key], np.float32).tobytes())
    return digest.hexdigest()


def main(out):
    import tf_lottery as tfl
    from tf_lottery._keras import keras, tf

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    np.random.seed(100 + task)
    local = tfl.get_masks(tfl.sparsify(_build(keras), 0.5, "uniform"))
    with strategy.scope():
        model = tfl.sparsify(_build(keras), 0.5, "uniform")
        explicit = tfl.sparsify(_build(keras), 0.5, "uniform", seed=2**40 + 3 + task)
    chief_local = tfl.get_masks(tfl.sparsify(_build(keras), 0.5, "uniform", seed=2**40 + 3))
    masks = tfl.get_masks(model)
    sha = _sha(masks)
    digest = tfl.check_masks_agree(model)
    if task == 1:
        masks["d1/kernel"][0, 0] = 1.0 - masks["d1/kernel"][0, 0]
    tfl.set_masks(model, masks)
    try:
        tfl.check_masks_agree(model)
        error = None
    except RuntimeError as e:
        error = str(e)
    result = {"task": task, "replicas": strategy.num_replicas_in_sync,
              "local_sha": _sha(local), "sha": sha,
              "explicit_sha": _sha(tfl.get_masks(explicit)), "chief_local_sha": _sha(chief_local), "digest": digest, "error": error,
              "kept": {k: int(v.sum()) for k, v in tfl.get_masks(model).items()}}
    with open(out + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1])
