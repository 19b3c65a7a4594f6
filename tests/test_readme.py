"""The README runs as written: every code block, in order, top to bottom.

``python`` blocks run in one namespace (as in a notebook), ``sh`` blocks in bash, both in a
scratch folder that links ``gin_configs/``; ``text`` blocks are output, not code. Training
commands run as smoke runs through ``TF_LOTTERY_MAX_STEPS=2``, which the binary honours
(see the README); the main job's output is checked for TensorFlow noise (NodeDef,
CUDA, absl lines) and for its one line per level. A block preceded by
``<!-- readme-test: skip (reason) -->`` is not run; the test pins that list (installing
the package, downloading CIFAR-10, fixed network ports).
The results table is the one ``tools/results_table.py`` makes from the run it came from.
"""
import importlib.util
import json
import linecache
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- readme-test: skip \(([^)]*)\) -->\n)?```(\w+)\n(.*?)```", re.S)
# Blocks run by their own tests below (a Keras 3 process per backend; the XLA-compiled
# export of "What sparsity buys"), not in this notebook-like namespace.
RUN_APART = ("# keras3\n", "tfl.compact(sparse, return_report=True)")
SKIPPED = ["installs the package; .ci/run does this in a fresh venv",
           "creates a venv and runs the whole suite; .ci/run does this",
           "downloads CIFAR-10 and trains on it",
           "fixed ports; tests/test_multiworker.py runs this recipe on free ports"]


def blocks():
    """(language, code, skip reason or None) of every fenced block, in order."""
    return [(m.group(3), m.group(4), m.group(2))
            for m in BLOCK.finditer(README.read_text(encoding="utf-8"))]


def test_quickstart_runs_and_gives_exact_zeros(capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    tfl, plain, sparse = scope["tfl"], scope["plain"], scope["sparse"]
    total = tfl.sparsity_report(plain)[-1]
    assert total["params"] == 64 * 300 + 300 * 100 + 100 * 10
    assert total["nonzeros"] == total["params"] - round(0.9 * total["params"])
    assert "total" in capsys.readouterr().out
    x = scope["x"][:32]
    np.testing.assert_array_equal(plain.predict(x, verbose=0), sparse.predict(x, verbose=0))


def _tf_lottery_command(bin_dir: pathlib.Path) -> None:
    """``tf-lottery`` on PATH: the installed console script, else the same entry point."""
    installed = shutil.which("tf-lottery", path=os.path.dirname(sys.executable))
    script = bin_dir / "tf-lottery"
    if installed:
        script.symlink_to(installed)
    else:
        script.write_text(f"#!{sys.executable}\nfrom tf_lottery.cli import main\nmain()\n")
        script.chmod(0o755)


def test_every_block_runs_as_written(tmp_path, monkeypatch):
    found = blocks()
    assert [reason for _, _, reason in found if reason] == SKIPPED
    assert {lang for lang, _, _ in found} <= {"python", "sh", "text"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tf_lottery_command(bin_dir)
    work = tmp_path / "work"
    work.mkdir()
    (work / "gin_configs").symlink_to(ROOT / "gin_configs")
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), TF_LOTTERY_MAX_STEPS="2")
    monkeypatch.chdir(work)
    scope = {}
    ran = []
    for i, (lang, code, reason) in enumerate(found):
        if reason or lang == "text" or any(code.startswith(m) or m in code for m in RUN_APART):
            continue
        if lang == "python":
            # AutoGraph reads a tf.function's source through linecache: give it the block's
            name = f"<README.md block {i}>"
            linecache.cache[name] = (len(code), None, code.splitlines(True), name)
            exec(compile(code, name, "exec"), scope)
        else:
            done = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            noise = [ln for ln in done.stdout.splitlines() + done.stderr.splitlines()
                     if re.search(r"Warning|deprecated|NodeDef|use_unbounded_threadpool|cuInit|"
                                  r"CUDA|absl::|oneDNN|Sharding callback|^[EIW]0000", ln)]
            assert noise == [], noise  # quiet: tf-lottery's own lines only
            if "digits_lenet300100_imp.gin" in code:  # the main job: one line per level
                lines = done.stdout.splitlines()
                assert [ln[:13] for ln in lines[:2]] == ["[1/2 levels, ", "[2/2 levels, "]
                assert "level 1: 80.20% of weights remain" in lines[1] and "(reinit " in lines[1]
                assert lines[2].startswith("tf-lottery result: ") and len(lines) == 3
                assert done.stderr == ""
        ran.append(lang)
    assert ran.count("python") == 7 and ran.count("sh") == 4, ran
    assert (work / "runs" / "digits_imp" / "level_1" / "weights_reinit.h5").is_file()
    assert (work / "runs" / "digits_imp" / "export" / "level_1_reinit" / "saved_model").is_dir()
    assert scope["report"]["verification"] is not None
    assert [r["level"] for r in scope["rows"]] == [0, 1, 1, 2, 2]


def test_results_table_is_the_one_its_run_produced():
    spec = importlib.util.spec_from_file_location("results_table",
                                                  ROOT / "tools" / "results_table.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    summary = json.loads((ROOT / "docs" / "digits_lenet300100_imp_summary.json").read_text())
    text = README.read_text(encoding="utf-8")
    assert tool.section_of(text) == tool.markdown(summary, tool.DEFAULT_COMMAND)
    assert len([r for r in summary["rows"] if r["kind"] == "ticket"]) == 20
    assert "TensorFlow 2." in tool.section_of(text)


def test_any_loop_examples_run_and_update_masks():
    """The three SparseOptimizer / subclassed-model examples (custom loop, own train_step,
    subclassed model) run as written and do what the text says."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### Any training loop")
    section = text[start:text.index("\n## ", start)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 3
    scopes = []
    for i, code in enumerate(blocks):
        assert len(code.strip().splitlines()) <= 35
        # AutoGraph reads a tf.function's source through linecache: give it the block's
        name = f"<README.md any-loop example {i}>"
        linecache.cache[name] = (len(code), None, code.splitlines(True), name)
        scopes.append({})
        exec(compile(code, name, "exec"), scopes[-1])
    loop, own, sub = scopes
    tfl = loop["tfl"]
    record = loop["opt"].last_update()
    assert record["step"] == 24 and record["drop_fraction"] == 0.0
    assert record["active"] == {k: int(v.sum()) for k, v in tfl.get_masks(loop["model"]).items()}
    assert loop["opt"].method.dense_gradient_steps == 6  # dense gradients at steps 4, ..., 24
    total = tfl.sparsity_report(own["model"])[-1]
    assert total["active"] == total["params"] - round(0.9 * 20 * 64) - round(0.9 * 64 * 2)
    net = sub["net"]
    assert len(sub["tfl"].get_masks(net)) == 2
    assert abs(sub["tfl"].sparsity_report(net)[-1]["sparsity"] - 0.8) < 0.005
    for scope, model in ((loop, loop["model"]), (own, own["model"]), (sub, net)):
        weights = scope["tfl"].get_weights(model)
        for key, mask in scope["tfl"].get_masks(model).items():
            assert not np.any(weights[key][mask == 0])  # exact zeros where masked


KERAS3_CHECK = """
import numpy as np
import pytest
total = tfl.sparsity_report(plain)[-1]
assert total["nonzeros"] == total["params"] - round(0.9 * total["params"]), total
np.testing.assert_array_equal(plain.predict(x[:32], verbose=0), sparse.predict(x[:32], verbose=0))
assert not any(isinstance(l, tfl.keras3.MaskedLayer) for l in plain.layers)
print("KERAS3_BLOCK_OK", keras.config.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_keras3_blocks_run_on_each_backend(backend, tmp_path):
    """README blocks starting with ``# keras3`` run in a Keras 3 process per backend."""
    import os
    import subprocess
    import sys
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"),
                                    re.S) if b.startswith("# keras3\n")]
    assert blocks
    root = str(README.parent)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    env.pop("TF_USE_LEGACY_KERAS", None)
    outputs = []
    for i, block in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(block + (KERAS3_CHECK if i == 0 else ""), encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    assert f"KERAS3_BLOCK_OK {backend}" in outputs[0]


def test_what_sparsity_buys_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## What sparsity buys"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    removed, report = scope["removed"], scope["report"]
    assert sum(r["removed"] for r in removed) > 0
    assert report["verification"]["max_abs_diff"] <= 1e-5
    assert len(report["condensed"]["layers"]) == 3  # one row per Dense layer
    assert "Kernel per layer" in capsys.readouterr().out
    assert (tmp_path / "export" / "fast" / "export_report.json").exists()
