"""tf-lottery for Keras 3 models (``import keras``), on the TensorFlow and JAX backends."""
from tf_lottery.keras3.registry import PrunableLayer, is_prunable, prunable_weights
from tf_lottery.keras3.wrapper import MaskedLayer

__all__ = ["MaskedLayer", "PrunableLayer", "is_prunable", "prunable_weights"]
from tf_lottery.keras3.api import (apply_masks, check_masks_agree, get_masks,  # noqa: E402
                                   get_weights, masked_layers, output_keys, set_masks, sparsify,
                                   sparsity_distribution, sparsity_report, strip)

__all__ += ["apply_masks", "check_masks_agree", "get_masks", "get_weights", "masked_layers",
            "output_keys", "set_masks", "sparsify", "sparsity_distribution", "sparsity_report",
            "strip"]
from tf_lottery.keras3.dst import SparseOptimizer  # noqa: E402

__all__ += ["SparseOptimizer"]
