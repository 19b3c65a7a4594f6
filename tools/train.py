"""Trains with gin: IMP, dense, RigL/SET/SNFS/static, gradual magnitude pruning.

    python tools/train.py --gin_file=gin_configs/digits_lenet300100_imp.gin --output_dir=DIR

Same as ``tf-lottery train``; ``--helpfull`` lists every flag.
"""
from tf_lottery import cli

if __name__ == "__main__":
    cli.run("train")
