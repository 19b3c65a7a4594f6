"""tf-lottery: lottery tickets and RigL on tfmot pruning, for tf_keras models.

``import tf_lottery as tfl`` gives, for tf_keras (Keras 2) models and for Keras 3 models
(``tf_lottery.keras3``; which Keras a model belongs to is detected per call):

- ``tfl.MaskedLayer``: a tfmot pruning wrapper holding one 0/1 mask per prunable weight;
- ``tfl.sparsify`` / ``tfl.strip``: wrap a model with masks drawn from a sparsity
  distribution / get back a plain model with exact zeros;
- ``tfl.sparsity_distribution`` (uniform, ER, ERK) and ``tfl.sparsity_report``;
- ``tfl.get_masks`` / ``tfl.set_masks`` / ``tfl.get_weights`` keyed by ``"layer/weight"``;
- ``tfl.check_masks_agree``: fails loudly unless every replica and worker holds the same masks;
- lottery tickets: ``tfl.IterativeMagnitudePruning`` / ``tfl.run_imp``,
  ``tfl.RewindCheckpoint`` and ``tfl.rewind``, ``tfl.WarmupStepDecay``;
- dynamic sparse training callbacks: ``tfl.RigL``, ``tfl.SET``, ``tfl.SNFS``,
  ``tfl.StaticSparse``, ``tfl.GradualMagnitudePruning``; ``tfl.SparseOptimizer`` runs them in
  any training loop; ``tfl.plot_layer_sparsity``;
- ``tfl.export``: a plain SavedModel (verified in a process without tf_lottery), dense
  and sparse TFLite, sizes, FLOPs and latency;
- ``tfl.compact``: a smaller plain model without the units the masks disconnected;
- instability analysis (Frankle et al. 2020): ``tfl.instability``, ``tfl.instability_sweep``,
  ``tfl.plot_instability``; pruning at initialisation: ``tfl.sparsify(...,
  mask_init="snip" | "grasp" | "synflow")``;
- ``tfl.train``: the gin entry point of ``tf-lottery train``.
"""
from tf_lottery import _keras  # noqa: F401  (imports tf_keras and tfmot, leaves tf.keras alone)
from tf_lottery.masking.api import custom_object_scope, custom_objects
from tf_lottery.dispatch import (apply_masks, check_masks_agree, get_masks,  # both Kerases
                                 get_weights, masked_layers, set_masks, sparsify,
                                 sparsity_distribution, sparsity_report, strip)
from tf_lottery.masking.wrapper import MaskedLayer
from tf_lottery.export import export
from tf_lottery.export.compact import compact
from tf_lottery.lottery.imp import IterativeMagnitudePruning, run_imp
from tf_lottery.lottery.rewind import RewindCheckpoint, rewind
from tf_lottery.training import models, schedules, datasets  # noqa: F401  (gin registration)
from tf_lottery.training.schedules import WarmupStepDecay
from tf_lottery.training.train import train
from tf_lottery.training import instability_experiment  # noqa: F401  (gin registration)
from tf_lottery.training import baselines_experiment  # noqa: F401  (gin registration)
from tf_lottery.training import sparse_experiment  # noqa: F401  (gin registration)
from tf_lottery.training import sweep  # noqa: F401  (gin registration: @sparse_sweep)
from tf_lottery.lottery.instability import instability, instability_sweep, plot_instability
from tf_lottery.plots import plot_accuracy_vs_remaining, plot_layer_sparsity
from tf_lottery.plots import plot_trials
from tf_lottery import dst  # noqa: F401
from tf_lottery.dst import GradualMagnitudePruning, RigL, SET, SNFS, SparseOptimizer, StaticSparse
from tf_lottery import lottery  # noqa: F401

__version__ = "0.1.0"

__all__ = [
    "GradualMagnitudePruning", "RigL", "SET", "SNFS", "SparseOptimizer", "StaticSparse",
    "plot_layer_sparsity",
    "IterativeMagnitudePruning", "RewindCheckpoint", "WarmupStepDecay", "plot_accuracy_vs_remaining",
    "compact", "export", "rewind", "run_imp", "train",
    "instability", "instability_sweep", "plot_instability", "plot_trials",
    "MaskedLayer", "apply_masks", "check_masks_agree", "custom_object_scope", "custom_objects",
    "get_masks", "get_weights",
    "masked_layers", "set_masks", "sparsify", "sparsity_distribution", "sparsity_report",
    "strip",
]


def _register_keras3_layers() -> None:
    """Where Keras 3 is loaded already, loads ``tf_lottery.keras3`` now, so that
    ``keras.saving.load_model`` finds ``tf_lottery>MaskedLayer`` (the import cannot set the
    backend any more: Keras 3 fixes it when it loads)."""
    if _keras.loaded_keras3() is not None:
        import importlib
        importlib.import_module("tf_lottery.keras3")


_register_keras3_layers()


def __getattr__(name):
    """``tfl.keras3`` (the Keras 3 side) is imported on first use, so that a tf_keras-only
    process never loads Keras 3."""
    if name == "keras3":
        import importlib
        return importlib.import_module("tf_lottery.keras3")
    raise AttributeError(f"module 'tf_lottery' has no attribute {name!r}")
