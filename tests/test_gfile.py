"""Run folders, checkpoints and exports on a tf.io.gfile filesystem (ram://, as gs://)."""
import pathlib
import uuid

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery import _io
from tf_lottery._keras import keras, tf
from tf_lottery.lottery import IterativeMagnitudePruning, results

gfile = tf.io.gfile


def _ram(name):
    return f"ram://tfl-{uuid.uuid4().hex}/{name}"


def test_atomic_write_on_gfile_replaces_whole_files_and_leaves_no_temporaries():
    path = _ram("a/b/note.txt")
    _io.write_text(path, "first")
    _io.write_text(path, "second")
    assert _io.read_bytes(path) == b"second"

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _io.atomic_write(path, broken)
    assert _io.read_bytes(path) == b"second"
    assert gfile.listdir(path.rsplit("/", 1)[0]) == ["note.txt"]
    results.write_arrays(path + ".npz", {"m": np.eye(3)})
    np.testing.assert_array_equal(results.read_arrays(path + ".npz")["m"], np.eye(3))


def _mlp():
    inputs = keras.Input((64,))
    h = keras.layers.Dense(16, activation="relu", name="fc")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(h))


def _imp(output_dir):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return IterativeMagnitudePruning(_mlp, (x[:120], y[:120]), (x[120:180], y[120:180]),
                                     lambda: keras.optimizers.SGD(0.05), epochs=1,
                                     batch_size=40, levels=2, fraction=0.5, verbose=0,
                                     output_dir=output_dir)


def test_imp_run_writes_resumes_and_exports_on_ram_filesystem():
    root = _ram("run")
    first = _imp(root)
    rows = first.run()
    for name in ("run.json", "rewind_point.npz", "level_0/masks.npz", "level_0/weights.h5",
                 "level_1/metrics.json", "summary.json", "summary.csv",
                 "accuracy_vs_remaining.png"):
        assert gfile.exists(f"{root}/{name}"), name
    assert gfile.glob(f"{root}/tensorboard/ticket/events.out.tfevents.*")
    assert not [n for n in gfile.listdir(root) if n.startswith(".tmp-")]
    masks = results.read_arrays(f"{root}/level_1/masks.npz")
    assert int(masks["fc/kernel"].sum()) == 512 and int(masks["out/kernel"].sum()) == 80

    # an interrupted run (level 1 unfinished) resumes from level 0's files
    gfile.remove(f"{root}/level_1/metrics.json")
    second = _imp(root)
    again = second.run()
    assert [t["level"] for t in second.timings] == [1]
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]
    resumed = results.read_arrays(f"{root}/level_1/masks.npz")
    for key in masks:
        np.testing.assert_array_equal(resumed[key], masks[key])
    # a different run is refused there, as on a local disk
    other = _imp(root)
    other.fraction = 0.3
    with pytest.raises(ValueError, match="holds a different run"):
        other.run()

    ticket = tfl.sparsify(_mlp(), 0.0)
    with _io.local_copy(f"{root}/level_1/weights.h5") as weights:
        ticket.load_weights(weights)
    tfl.set_masks(ticket, masks)
    target = f"{root}/export"
    report = tfl.export(ticket, target, tflite=False, verify=False, verbose=False)
    assert report["path"] == target
    assert sorted(n.rstrip("/") for n in gfile.listdir(target)) == [
        "export_report.json", "saved_model", "sparsity.json"]
    assert results.read_json(f"{target}/export_report.json")["path"] == target
    x = np.random.default_rng(0).random((3, 64)).astype("float32")
    loaded = tf.saved_model.load(f"{target}/saved_model")
    out = list(loaded.signatures["serving_default"](tf.constant(x)).values())[0].numpy()
    np.testing.assert_allclose(out, ticket(x).numpy(), atol=1e-6)
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        tfl.export(ticket, target, tflite=False, verify=False, verbose=False)
    # overwriting a remote export keeps the options (compact) and replaces our export only
    report = tfl.export(ticket, target, overwrite=True, compact=True, tflite=False,
                        verify=False, verbose=False)
    assert report["compact"] is not None
    with gfile.GFile(f"{target}/notes.txt", "w") as f:
        f.write("a user's file")
    with pytest.raises(FileExistsError, match="did not write"):
        tfl.export(ticket, target, overwrite=True, tflite=False, verify=False, verbose=False)
    assert gfile.exists(f"{target}/notes.txt")


def test_training_binary_runs_into_a_ram_folder_and_finds_it_finished(tmp_path):
    import gin
    from tf_lottery.training import train as training

    root = _ram("train")
    config = str(pathlib.Path(__file__).resolve().parent.parent / "gin_configs"
                 / "digits_lenet300100_rigl.gin")
    runs = []
    try:
        for _ in range(2):
            gin.clear_config()
            training.parse_gin([config], ["train.max_steps = 2", "sparse_training.verbose = 0"])
            runs.append(training.train(root))
    finally:
        gin.clear_config()
    for name in ("run.json", "metrics.json", "model.h5", "layer_sparsity.png",
                 "operative_config.gin"):
        assert gfile.exists(f"{root}/{name}"), name
    assert runs[1] == results.read_json(f"{root}/metrics.json")  # read back, not retrained
    assert runs[1]["fit_seconds"] == runs[0]["fit_seconds"]
    assert runs[1]["checksums"] == runs[0]["checksums"]
    from tf_lottery.export.cli import load_checkpoint
    from tf_lottery.training.train import checksums
    assert checksums(load_checkpoint(f"{root}/model.h5")) == runs[0]["checksums"]

    # a non-chief worker's private copy of a remote run folder
    _io.download_tree(root, str(tmp_path / "copy"), skip=("tensorboard", "backup", ".tmp-*"))
    copied = sorted(p.name for p in (tmp_path / "copy").iterdir())
    assert copied == sorted(n.rstrip("/") for n in gfile.listdir(root)
                            if n.rstrip("/") not in ("tensorboard", "backup"))
    assert (tmp_path / "copy" / "metrics.json").read_bytes() == _io.read_bytes(
        f"{root}/metrics.json")
