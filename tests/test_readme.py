"""The README's quickstart runs as written and does what it says."""
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
