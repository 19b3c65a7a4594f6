"""Trains with gin: dense, IMP (lottery tickets, controls, baselines), RigL / SET / SNFS /
static sparse, gradual magnitude pruning.

    python tools/train.py --gin_file=gin_configs/digits_lenet300100_imp.gin --output_dir=DIR

Same as ``tf-lottery train``; ``--help`` lists its flags, ``--helpfull`` every flag.
Smoke run of any config: ``--gin_param='train.max_steps = 2'``.
"""
import os
import sys

# Runs from a checkout without installing: make the repo importable.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

if __name__ == "__main__":
    os.environ.setdefault("TF_LOTTERY_QUIET", "1")  # before TensorFlow loads (tf_lottery._quiet)

from tf_lottery import cli  # noqa: E402

if __name__ == "__main__":
    cli.run("train")
