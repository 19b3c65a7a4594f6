"""Dynamic sparse training: RigL, SET, SNFS, static sparse and gradual magnitude pruning
as tf_keras callbacks over the masked layers (see ``tf_lottery.dst.callback``)."""
from tf_lottery.dst import schedules, updaters  # noqa: F401
from tf_lottery.dst.callback import (GradualMagnitudePruning, MaskUpdateCallback, RigL, SET,
                                     SNFS, StaticSparse)
from tf_lottery.masking.state import optimizer_slots

__all__ = ["GradualMagnitudePruning", "MaskUpdateCallback", "RigL", "SET", "SNFS",
           "StaticSparse", "optimizer_slots", "schedules", "updaters"]
