"""The README's quickstart runs as written and does what it says."""
import linecache
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


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
    for i, block in enumerate(blocks):
        script = tmp_path / f"block{i}.py"
        script.write_text(block + (KERAS3_CHECK if i == 0 else ""), encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    assert f"KERAS3_BLOCK_OK {backend}" in done.stdout


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
