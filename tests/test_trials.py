"""IMP trials (resume, summary statistics, figure) and pruning at initialisation as IMP
controls, on a tiny MLP over a slice of digits."""
import os

import numpy as np
import pytest

import tf_lottery as tfl
from tf_lottery._keras import keras
from tf_lottery.lottery import IterativeMagnitudePruning, controls, results, trials
from tf_lottery.masking import init_scores


@pytest.fixture(scope="module")
def data():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return (x[:240], y[:240]), (x[240:360], y[240:360])


def mlp():
    inp = keras.Input((64,))
    h = keras.layers.Dense(24, activation="relu", name="fc")(inp)
    h = keras.layers.Dense(12, activation="relu", name="fc2")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="out")(h))


def sgd():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def runner(data, out, **kw):
    kw = dict(dict(epochs=1, levels=3, batch_size=40, verbose=0), **kw)
    return IterativeMagnitudePruning(mlp, data[0], data[1], sgd, output_dir=out, **kw)


class StopAt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt at the start of the ``n``-th ``fit`` (1-based)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.fits = n, 0

    def on_train_begin(self, logs=None):
        self.fits += 1
        if self.fits == self.n:
            raise KeyboardInterrupt


def mtimes(folder):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for root, _, files in os.walk(folder) for f in files}


def test_aggregate_gives_exact_mean_std_min_max_per_level_and_kind():
    trial_rows = [
        [{"level": 0, "kind": "ticket", "remaining": 1.0, "test_accuracy": 0.9,
          "early_stop_iteration": 100},
         {"level": 1, "kind": "ticket", "remaining": 0.8, "test_accuracy": 0.5,
          "early_stop_iteration": None},
         {"level": 1, "kind": "reinit", "remaining": 0.8, "test_accuracy": 0.25}],
        [{"level": 0, "kind": "ticket", "remaining": 1.0, "test_accuracy": 0.8,
          "early_stop_iteration": 300},
         {"level": 1, "kind": "ticket", "remaining": 0.8, "test_accuracy": 0.75,
          "early_stop_iteration": 40},
         {"level": 1, "kind": "reinit", "remaining": 0.8, "test_accuracy": 0.5}],
        [{"level": 0, "kind": "ticket", "remaining": 1.0, "test_accuracy": 0.7,
          "early_stop_iteration": 200},
         {"level": 1, "kind": "ticket", "remaining": 0.8, "test_accuracy": 1.0,
          "early_stop_iteration": 60}],
    ]
    rows = trials.aggregate(trial_rows)
    assert [(r["level"], r["kind"], r["trials"]) for r in rows] == [
        (0, "ticket", 3), (1, "ticket", 3), (1, "reinit", 2)]
    dense, ticket, reinit = rows
    assert dense["test_accuracy"] == pytest.approx(0.8)
    assert dense["test_accuracy_std"] == pytest.approx(0.1)  # sample std, ddof=1
    assert (dense["test_accuracy_min"], dense["test_accuracy_max"]) == (0.7, 0.9)
    assert dense["early_stop_iteration"] == 200.0
    assert dense["early_stop_iteration_std"] == 100.0
    assert ticket["test_accuracy"] == 0.75
    assert ticket["test_accuracy_std"] == 0.25
    # the trial without an early-stopping iteration is left out, not counted as 0
    assert ticket["early_stop_iteration"] == 50.0
    assert (ticket["early_stop_iteration_min"], ticket["early_stop_iteration_max"]) == (40, 60)
    assert reinit["test_accuracy"] == 0.375
    assert reinit["test_accuracy_std"] == pytest.approx(np.std([0.25, 0.5], ddof=1))
    assert reinit["remaining_std"] == 0.0
    assert reinit["early_stop_iteration"] is None
    one = trials.aggregate(trial_rows[:1])
    assert one[0]["test_accuracy_std"] == 0.0 and one[0]["trials"] == 1


def test_trials_resume_per_trial_and_recompute_nothing_finished(data, tmp_path):
    out = str(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):  # fits: trial 0 levels 0, 1, then level 2 stops
        runner(data, out, trials=2, callbacks=[StopAt(3)]).run()
    assert results.finished_levels(os.path.join(out, "trial_0"), 3) == 2
    assert not os.path.exists(os.path.join(out, "trial_1"))
    before = mtimes(out)
    rows = runner(data, out, trials=2).run()
    after = mtimes(out)
    changed = sorted(os.path.relpath(p, out) for p in before if before[p] != after[p])
    assert not [p for p in changed if p.startswith(("trial_0/level_0", "trial_0/level_1"))]
    assert results.finished_levels(os.path.join(out, "trial_0"), 3) == 3
    assert results.finished_levels(os.path.join(out, "trial_1"), 3) == 3
    assert results.read_json(os.path.join(out, "trial_1", "run.json"))["seed"] == 1
    per_trial = [results.read_json(os.path.join(out, f"trial_{i}", "summary.json"))["rows"]
                 for i in range(2)]
    assert per_trial[0] != per_trial[1]  # two seeds, two results
    summary = results.read_json(os.path.join(out, "summary.json"))
    assert summary["trials"] == 2 and summary["seeds"] == [0, 1]
    assert summary["rows"] == rows == trials.aggregate(per_trial)
    ticket = [r for r in rows if r["kind"] == "ticket"]
    assert [r["level"] for r in ticket] == [0, 1, 2]
    accuracies = [per_trial[i][2]["test_accuracy"] for i in range(2)]
    assert ticket[2]["test_accuracy"] == pytest.approx(np.mean(accuracies))
    assert ticket[2]["test_accuracy_min"] == min(accuracies)
    assert ticket[2]["test_accuracy_max"] == max(accuracies)
    with open(os.path.join(out, "summary.csv"), encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    assert header[:5] == ["level", "kind", "trials", "remaining", "remaining_std"]
    with open(os.path.join(out, "accuracy_vs_remaining.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # a finished experiment: every trial is skipped and nothing is written
    again = runner(data, out, trials=2).run()
    assert again == rows
    assert mtimes(out) == after
    # the folder is ours: a different run moves it aside on overwrite, never refuses it
    results.RunDirectory(out, {"another": "run"}, overwrite=True)
    assert any(e.startswith("run.old-") for e in os.listdir(tmp_path))
    # export points at a trial
    from tf_lottery.export.run_folder import RunExportError, load_run_model
    moved = next(str(tmp_path / e) for e in os.listdir(tmp_path) if e.startswith("run.old-"))
    with pytest.raises(RunExportError, match="trial_0"):
        load_run_model(moved)


def test_export_names_the_run_folder_of_a_baselines_comparison(tmp_path):
    from tf_lottery.export.run_folder import RunExportError, load_run_model
    results.RunDirectory(str(tmp_path / "cmp"), {"modes": ["ticket", "finetune"]})
    with pytest.raises(RunExportError, match="mode_ticket"):
        load_run_model(str(tmp_path / "cmp"))


def test_trials_one_keeps_the_single_run_layout(data, tmp_path):
    out = str(tmp_path / "single")
    runner(data, out, levels=2, trials=1).run()
    entries = set(os.listdir(out))
    assert {"level_0", "level_1", "summary.json"} <= entries
    assert not [e for e in entries if e.startswith("trial_")]
    assert "trials" not in results.read_json(os.path.join(out, "run.json"))
    with pytest.raises(ValueError, match="trials must be >= 1"):
        runner(data, out, trials=0)


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_pruning_at_init_controls_match_the_ticket_sparsity(data, scope):
    imp = runner(data, None, levels=2, scope=scope, output_fraction=0.1,
                 controls=controls.PAI)
    rows = imp.run()
    level1 = {r["kind"]: r for r in rows if r["level"] == 1}
    assert sorted(level1) == sorted(("ticket",) + controls.PAI)
    ticket = level1["ticket"]["remaining"]
    # fc 1536 and fc2 288 weights at 20%, out 120 at 10%: 1229 + 230 + 108 of 1944 kept
    assert ticket == pytest.approx((1229 + 230 + 108) / 1944)
    counts = {}
    for kind in controls.PAI:
        assert level1[kind]["remaining"] == ticket
        model = imp._control_models[kind][0]
        counts[kind] = {k: int(m.sum()) for k, m in tfl.get_masks(model).items()}
        assert counts[kind]["out/kernel"] == 108  # the output layer at its own rate
        if scope == "layerwise":
            assert counts[kind] == {"fc/kernel": 1229, "fc2/kernel": 230, "out/kernel": 108}
        assert sum(counts[kind].values()) == 1229 + 230 + 108
    if scope == "global":  # one threshold over fc and fc2: the scores decide the split
        assert len({c["fc/kernel"] for c in counts.values()}) > 1
    # SNIP keeps, per layer, the largest |g * w| at theta_0 on the scoring batch
    snip_model, start = imp._control_models["pai_snip"]
    fresh = imp._build()
    tfl.rewind(fresh, start)
    units = {u.key: u.weight for u in controls.units(fresh)}
    grads = init_scores.loss_gradients(fresh, list(units.values()),
                                       controls._scoring_batch(imp), imp.loss)
    masks = tfl.get_masks(snip_model)
    scores = {k: np.abs(w.numpy() * g) for (k, w), g in zip(units.items(), grads)}
    groups = ([[k] for k in scores] if scope == "layerwise"
              else [["fc/kernel", "fc2/kernel"], ["out/kernel"]])
    for keys in groups:
        kept = np.concatenate([scores[k][masks[k] == 1] for k in keys])
        pruned = np.concatenate([scores[k][masks[k] == 0] for k in keys])
        assert kept.min() >= pruned.max()
