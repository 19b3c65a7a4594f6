"""``tf-lottery train --backend=jax``: ``KERAS_BACKEND`` set before Keras 3 loads.

Keras 3 fixes its backend when it is first imported, and importing TensorFlow imports
it, so by the time the binary parses its flags the backend is settled. For the binaries
(``tf-lottery``, ``tools/*.py``; as ``tf_lottery._quiet`` detects them) this module
reads ``--backend`` from the command line before TensorFlow loads and sets
``KERAS_BACKEND``; ``tf_lottery.training.flavour`` checks it again after flag parsing
(a bad value is a one-line error there). Imports nothing from TensorFlow.
"""
import os
import sys
from typing import Optional

from tf_lottery import _quiet

BACKENDS = ("tensorflow", "jax", "torch")


def backend_from_argv(argv) -> Optional[str]:
    """The last ``--backend=NAME`` / ``--backend NAME`` value in ``argv``, else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            value = arg[len("--backend="):]
        elif arg == "--backend" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def select_for_binaries() -> None:
    """Sets ``KERAS_BACKEND`` from ``--backend`` when this process is a tf-lottery binary
    and Keras is not loaded yet; otherwise does nothing."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program not in _quiet.BINARIES and os.environ.get(_quiet.QUIET_ENV) != "1":
        return
    if "keras" in sys.modules:
        return
    value = backend_from_argv(sys.argv[1:])
    if value in BACKENDS:
        os.environ["KERAS_BACKEND"] = value
