"""Run folders that never lose data: the marker, --overwrite, read-only repeats, modes,
and exporting any level and kind of an IMP run."""
import os

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery import _io
from tf_lottery._keras import keras, tf
from tf_lottery.export.run_folder import RunExportError, export_run, load_run_model
from tf_lottery.lottery import IterativeMagnitudePruning, results


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder):
    """path relative to ``folder`` -> permission bits, for every file and folder in it."""
    out = {".": os.stat(folder).st_mode & 0o777}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder)] = os.stat(full).st_mode & 0o777
    return out


def _snapshot(folder):
    """path -> (bytes, mtime) of every file in ``folder``."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, folder)] = (f.read(), os.stat(full).st_mtime_ns)
    return out


# ------------------------------------------------------------------ the folder itself

def test_overwrite_moves_our_run_aside_and_never_touches_other_files(tmp_path, monkeypatch):
    thesis = tmp_path / "thesis"
    (thesis / "figures").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\section{Mine}")
    for overwrite in (False, True):
        with pytest.raises(results.RunFolderError, match="not a tf-lottery run folder.*thesis"):
            results.RunDirectory(str(thesis), {"a": 1}, overwrite=overwrite)
    assert sorted(os.listdir(thesis)) == ["figures", "thesis.tex"]
    assert (thesis / "thesis.tex").read_text() == "\\section{Mine}"

    run = tmp_path / "run"
    results.RunDirectory(str(run), {"a": 1})
    results.write_json(str(run / "level_0" / "metrics.json"), {"kinds": []})  # a result
    with pytest.raises(results.RunFolderError, match=r"different run.*\['a'\].*--overwrite"):
        results.RunDirectory(str(run), {"a": 2})
    results.RunDirectory(str(run), {"a": 2}, overwrite=True)
    (old,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert results.read_json(str(old / "run.json")) == {"a": 1}
    assert (old / "level_0" / "metrics.json").is_file()  # moved aside, not deleted
    assert results.read_json(str(run / "run.json")) == {"a": 2}
    assert sorted(os.listdir(run)) == [results.MARKER, "run.json"]

    results.write_json(str(run / "level_0" / "metrics.json"), {"kinds": []})
    (run / "notes.txt").write_text("mine")  # a user's file inside a run folder
    with pytest.raises(results.RunFolderError, match="did not write.*notes.txt"):
        results.RunDirectory(str(run), {"a": 3}, overwrite=True)
    (run / "notes.txt").unlink()
    monkeypatch.chdir(run)  # --output_dir=. --overwrite: the working directory stays
    with pytest.raises(results.RunFolderError, match="current directory"):
        results.RunDirectory(".", {"a": 3}, overwrite=True)
    assert results.read_json(str(run / "run.json")) == {"a": 2}
    assert results.read_json(str(run / "run.json")) == {"a": 2}


def test_overwrite_moves_aside_an_instability_run(tmp_path):
    """The instability experiment's files count as ours: a new config moves them aside."""
    run = tmp_path / "run"
    results.RunDirectory(str(run), {"a": 1})
    for name in ("k_10.json", "instability.json", "instability.png"):
        (run / name).write_text("{}")
    results.RunDirectory(str(run), {"a": 2}, overwrite=True)
    (old,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (old / "k_10.json").is_file() and (old / "instability.png").is_file()


def test_a_failed_start_is_replaced_by_the_corrected_run(tmp_path):
    run = tmp_path / "run"
    results.RunDirectory(str(run), {"sparsity": 1.5})  # stopped before any result
    results.RunDirectory(str(run), {"sparsity": 0.5})
    assert results.read_json(str(run / "run.json")) == {"sparsity": 0.5}
    assert not any(p.name.startswith("run.old-") for p in tmp_path.iterdir())


def test_atomic_writes_honour_the_umask(tmp_path, umask_022):
    _io.write_text(str(tmp_path / "a.txt"), "x")
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o644
    os.umask(0o027)
    _io.write_text(str(tmp_path / "b.txt"), "x")
    assert os.stat(tmp_path / "b.txt").st_mode & 0o777 == 0o640


# ------------------------------------------------------------------ an IMP run folder

def mlp():
    inputs = keras.Input((64,))
    h = keras.layers.Dense(24, activation="relu", name="fc")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(h))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:200], y[:200]), (x[200:300], y[200:300])


def _imp(digits, folder, **kw):
    return IterativeMagnitudePruning(
        mlp, digits[0], digits[1], lambda: keras.optimizers.SGD(0.05), epochs=1,
        batch_size=50, levels=4, fraction=0.5, controls=("reinit", "random_mask"),
        output_dir=str(folder), verbose=0, **kw)


@pytest.fixture(scope="module")
def imp_run(digits, tmp_path_factory):
    old = os.umask(0o022)
    try:
        folder = tmp_path_factory.mktemp("imp") / "run"
        rows = _imp(digits, folder).run()
    finally:
        os.umask(old)
    return folder, rows


def test_run_files_are_0644_and_folders_0755(imp_run):
    folder, _ = imp_run
    modes = _modes(folder)
    assert {p for p, m in modes.items() if m != (0o755 if (folder / p).is_dir() else 0o644)} \
        == set(), modes
    assert {"level_3/weights_reinit.h5", "level_3/weights_random_mask.h5", "model.json",
            results.MARKER} <= set(modes)


def test_a_finished_run_is_read_only_to_a_repeat(imp_run, digits):
    folder, rows = imp_run
    before = _snapshot(folder)
    again = _imp(digits, folder).run()
    assert [r["test_accuracy"] for r in again] == [r["test_accuracy"] for r in rows]
    assert _snapshot(folder) == before


def test_level_3_reinit_control_exported_and_loaded(imp_run, digits, tmp_path):
    folder, rows = imp_run
    (x_test, y_test) = digits[1]
    model, provenance = load_run_model(str(folder), level=3, kind="reinit")
    row = next(r for r in rows if (r["level"], r["kind"]) == (3, "reinit"))
    assert provenance["method"] == "imp_reinit" and provenance["remaining"] == row["remaining"]
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    scores = model.evaluate(x_test, y_test, batch_size=50, verbose=0, return_dict=True)
    assert scores["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-7)
    masks = results.read_arrays(str(folder / "level_3" / "masks.npz"))  # the ticket's masks
    for key, mask in tfl.get_masks(model).items():
        np.testing.assert_array_equal(mask, masks[key])
    ticket, _ = load_run_model(str(folder), level=3)
    assert not np.array_equal(tfl.get_weights(ticket)["fc/kernel"],
                              tfl.get_weights(model)["fc/kernel"])

    report = export_run(str(folder), str(tmp_path / "reinit3"), level=3, kind="reinit",
                        tflite=False, verify=False, verbose=False)
    assert report["prunable"]["active"] == sum(int(m.sum()) for m in masks.values())
    loaded = tf.saved_model.load(str(tmp_path / "reinit3" / "saved_model"))
    serve = loaded.signatures["serving_default"]
    (out,) = serve(**{serve.structured_input_signature[1].popitem()[0]:
                      tf.constant(x_test[:8])}).values()
    np.testing.assert_allclose(out.numpy(), model(x_test[:8]).numpy(), atol=1e-5)

    with pytest.raises(RunExportError, match="starts at level 1"):
        load_run_model(str(folder), level=0, kind="reinit")
    with pytest.raises(RunExportError, match="ticket.*reinit.*random_mask"):
        load_run_model(str(folder), kind="finetune")
    with pytest.raises(RunExportError, match="level 7 is not finished"):
        load_run_model(str(folder), level=7)
