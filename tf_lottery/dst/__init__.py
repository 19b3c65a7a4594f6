"""Dynamic sparse training: RigL, SET, SNFS, static sparse and gradual magnitude pruning
over the masked layers, as tf_keras callbacks (``model.fit``) or through
``SparseOptimizer`` in any training loop.

Modules: ``updaters`` (drop/grow rules, pure tensor math written against ``arrays``, the
TensorFlow/JAX array namespace, so the Keras 3 path ``tf_lottery.keras3.dst`` runs the same
rules), ``schedules`` (drop fraction),
``engine`` (the in-graph step and mask update), ``methods`` (the method classes),
``callback`` (fit plumbing and logging), ``optimizer`` (the optimizer wrapper).
"""
from tf_lottery.dst import schedules, updaters  # noqa: F401
from tf_lottery.dst.callback import MaskUpdateCallback
from tf_lottery.dst.engine import MaskUpdateEngine
from tf_lottery.dst.methods import GradualMagnitudePruning, RigL, SET, SNFS, StaticSparse
from tf_lottery.dst.optimizer import SparseOptimizer
from tf_lottery.masking.state import optimizer_slots

__all__ = ["GradualMagnitudePruning", "MaskUpdateCallback", "MaskUpdateEngine", "RigL", "SET",
           "SNFS", "SparseOptimizer", "StaticSparse", "optimizer_slots", "schedules",
           "updaters"]
