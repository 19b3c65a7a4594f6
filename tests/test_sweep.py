"""The sparsity sweep (``@sparse_sweep``): cells, summary statistics, resume, run folder."""
import importlib.util
import json
import os
import pathlib

import gin
import pytest

from tf_lottery import cli, dst
from tf_lottery._keras import keras, tf
from tf_lottery.export.run_folder import RunExportError, load_run_model
from tf_lottery.lottery import results
from tf_lottery.training import sparse_experiment, sweep
from tf_lottery.training import train as training

TINY = ["data.name = 'digits'", "data.batch_size = 60",
        "sparse_training.model = @lenet_300_100", "sparse_training.epochs = 1",
        "sparse_training.steps_per_epoch = 4", "sparse_training.verbose = 0",
        "RigL.delta_t = 2"]


@pytest.fixture
def tiny_gin():
    """Cells of 4 steps, run eagerly (tracing would cost more than the steps)."""
    gin.clear_config()
    training.parse_gin([], TINY)
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)
    gin.clear_config()
    keras.backend.clear_session()


def _files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _sweep(run, calls, **kwargs):
    def counted(**cell):
        calls.append(os.path.relpath(cell["output_dir"], run))
        return sparse_experiment.sparse_training(**cell)

    args = dict(methods={"RigL": dst.RigL, "Prune": dst.GradualMagnitudePruning},
                sparsities=(0.5, 0.9), trials=2, dense=False, prune_every=2,
                train_fn=counted)
    return sweep.sparse_sweep(str(run), **dict(args, **kwargs))


def test_sweep_writes_every_cell_and_resumes_without_writing(tmp_path, tiny_gin):
    run, calls = tmp_path / "run", []
    summary = _sweep(run, calls)
    cells = [f"cells/{m}_{s}/trial_{t}" for t in (0, 1) for s in (50, 90)
             for m in ("RigL", "Prune")]
    assert calls == cells  # trial by trial
    assert all((run / c / "metrics.json").is_file() for c in cells)
    assert [(r["method"], r["sparsity"], r["trials"]) for r in summary] == [
        ("RigL", 0.5, 2), ("Prune", 0.5, 2), ("RigL", 0.9, 2), ("Prune", 0.9, 2)]
    saved = results.read_json(str(run / "sweep.json"))
    assert saved["summary"] == summary and [c["cell"] for c in saved["cells"]] == cells
    assert [c["seed"] for c in saved["cells"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    # sparse-from-scratch starts at the target; pruning starts dense and reaches it
    assert [round(c["final_sparsity"], 2) for c in saved["cells"][:4]] == [0.5, 0.5, 0.9, 0.9]
    assert (run / "sweep.csv").read_text().splitlines()[0] == \
        "method,sparsity,trials,mean,std,min,max"
    assert len((run / "sweep_cells.csv").read_text().splitlines()) == 1 + len(cells)
    assert (run / "accuracy_vs_sparsity.png").stat().st_size > 1000

    before = _files(run)
    calls.clear()
    assert _sweep(run, calls) == summary
    assert calls == [] and _files(run) == before  # nothing trained, nothing written

    (run / "cells/Prune_90/trial_1/metrics.json").unlink()  # as if killed in that cell
    assert _sweep(run, calls)[:3] == summary[:3]
    assert calls == ["cells/Prune_90/trial_1"]
    after = _files(run)
    assert {p for p in before if after.get(p) != before[p]} >= {run / "sweep.json"}
    assert not any(after[p] != before[p] for p in before
                   if "cells" in p.parts and "Prune_90" not in p.parts)
    with pytest.raises(RunExportError, match=r"sparsity sweep; export one of its cells"):
        load_run_model(str(run))
    assert cli._where_it_stopped(str(run)) == f"8 of 8 cells of the sweep are saved in {run}/cells"

    table = _tool()
    keep = tmp_path / "kept"
    table.main([str(run), "--trials=1", f"--keep={keep}"])
    kept = results.read_json(str(keep) + ".json")
    assert [c["cell"] for c in kept["cells"]] == cells[:4]
    assert kept["summary"] == sweep.summarise(saved["cells"][:4])
    assert "| RigL | " in table.markdown(summary, 2)
    with pytest.raises(SystemExit, match="trials 0..2 are not all finished"):
        table.main([str(run), "--trials=3"])


def _tool():
    spec = importlib.util.spec_from_file_location(
        "sweep_table", pathlib.Path(__file__).parent.parent / "tools" / "sweep_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_statistics_are_exact():
    rows = [{"method": "RigL", "sparsity": 0.9, "test_accuracy": a} for a in (0.5, 0.75, 1.0)]
    rows += [{"method": "SET", "sparsity": 0.9, "test_accuracy": 0.25},
             {"method": "RigL", "sparsity": 0.99, "test_accuracy": 0.125},
             {"method": "RigL", "sparsity": 0.99, "test_accuracy": 0.375}]
    assert sweep.summarise(rows) == [
        {"method": "RigL", "sparsity": 0.9, "trials": 3, "mean": 0.75, "std": 0.25,
         "min": 0.5, "max": 1.0},
        {"method": "SET", "sparsity": 0.9, "trials": 1, "mean": 0.25, "std": 0.0,
         "min": 0.25, "max": 0.25},
        {"method": "RigL", "sparsity": 0.99, "trials": 2, "mean": 0.25,
         "std": 0.125 * 2 ** 0.5, "min": 0.125, "max": 0.375}]


def test_cell_names():
    assert [sweep.cell_name("RigL", s) for s in (0.8, 0.95, 0.985, 0.999)] == [
        "RigL_80", "RigL_95", "RigL_98.5", "RigL_99.9"]
    assert sweep.cell_name("dense", 0.0) == "dense"


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods={"Ri gL": dst.RigL}), "cannot name a cell folder"),
    (dict(methods={"RigL": "RigL"}), r"must be a method class \(@RigL"),
    (dict(sparsities=(0.9, 1.0)), r"must lie in \(0, 1\), got 1.0"),
    (dict(trials=0), "at least 1"),
    (dict(prune_begin=0.8, prune_end=0.75), r"0 <= prune_begin < prune_end <= 1"),
])
def test_bad_settings_fail_before_the_folder_exists(tmp_path, kwargs, message):
    args = dict({"methods": {"RigL": dst.RigL}}, **kwargs)
    with pytest.raises(ValueError, match=message):
        sweep.sparse_sweep(str(tmp_path / "run"), **args)
    assert not (tmp_path / "run").exists()


def test_overwrite_moves_a_sweep_aside(tmp_path):
    """The sweep's files count as ours: a new config moves the old sweep aside."""
    run = tmp_path / "run"
    results.RunDirectory(str(run), {"a": 1})
    (run / "cells" / "RigL_90" / "trial_0").mkdir(parents=True)
    for name in ("sweep.json", "sweep.csv", "sweep_cells.csv", "accuracy_vs_sparsity.png"):
        (run / name).write_text(json.dumps({}))
    results.RunDirectory(str(run), {"a": 2}, overwrite=True)
    (old,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (old / "sweep.json").is_file() and (old / "cells" / "RigL_90").is_dir()


def test_readme_table_is_the_kept_sweep():
    """The README's sweep table is the one tools/sweep_table.py makes from the kept rows."""
    root = pathlib.Path(__file__).parent.parent
    kept = json.loads((root / "docs" / "digits_lenet300100_rigl_sweep.json").read_text())
    trials = len({c["trial"] for c in kept["cells"]})
    assert kept["summary"] == sweep.summarise(kept["cells"])
    readme = (root / "README.md").read_text(encoding="utf-8")
    table = readme.split("<!-- sweep-table:begin -->\n")[1].split("<!-- sweep-table:end -->")[0]
    assert table == _tool().markdown(kept["summary"], trials)
    assert (root / "docs" / "digits_lenet300100_rigl_sweep.png").is_file()
