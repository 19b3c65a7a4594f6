"""Lottery tickets: rewinding, the IMP runner, its controls and baselines, run folders."""
from tf_lottery.lottery.imp import IterativeMagnitudePruning, run_imp  # noqa: F401
from tf_lottery.lottery.rewind import RewindCheckpoint, rewind, snapshot  # noqa: F401
