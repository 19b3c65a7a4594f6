"""Runs a benchmark script once per Keras flavour, each in a process of its own (Keras and
its backend are fixed when first imported): ``tf_keras``, or a Keras 3 backend name."""
import os
import subprocess
import sys


def flavour_env(flavour: str) -> dict:
    """This process's environment with ``flavour`` selected."""
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.pop("KERAS_BACKEND", None)
    if flavour == "tf_keras":
        env["TF_USE_LEGACY_KERAS"] = "1"
    else:
        env["KERAS_BACKEND"] = flavour
    return env


def run_each(script: str, flag: str, flavours, argv) -> int:
    """Runs ``script flag <flavour> argv...`` for each flavour in turn; the exit codes or'ed."""
    code = 0
    for flavour in flavours:
        code |= subprocess.run([sys.executable, os.path.abspath(script), flag, flavour]
                               + list(argv), env=flavour_env(flavour)).returncode
        print(flush=True)
    return code
