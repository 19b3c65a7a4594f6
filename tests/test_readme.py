"""The README's quickstart runs as written and does what it says."""
import pathlib
import re

import numpy as np

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
