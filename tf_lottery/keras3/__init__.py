"""tf-lottery for Keras 3 models (``import keras``), on the TensorFlow and JAX backends."""
from tf_lottery.keras3.registry import PrunableLayer, is_prunable, prunable_weights
from tf_lottery.keras3.wrapper import MaskedLayer

__all__ = ["MaskedLayer", "PrunableLayer", "is_prunable", "prunable_weights"]
