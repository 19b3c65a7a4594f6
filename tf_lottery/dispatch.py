"""``tfl.sparsify`` & co. for both Kerases: each call looks at its model and routes it.

A model is a Keras 3 model if it is an instance of ``keras.Model`` from Keras 3 (only
checked when Keras 3 is already imported, so a tf_keras-only process never loads it);
anything else goes to the tf_keras path (tfmot), which rejects non-tf_keras models with
its own error.
"""
import functools
import sys

from tf_lottery._keras import loaded_keras3
from tf_lottery.masking import api as _tf_keras_api


def is_keras3(model) -> bool:
    """Whether ``model`` is a Keras 3 (``import keras``) model or layer."""
    keras = loaded_keras3()
    return keras is not None and isinstance(model, (keras.Model, keras.layers.Layer))


def _route(name):
    tf_keras_fn = getattr(_tf_keras_api, name)

    @functools.wraps(tf_keras_fn)
    def routed(model, *args, **kwargs):
        if is_keras3(model):
            from tf_lottery.keras3 import api as keras3_api
            return getattr(keras3_api, name)(model, *args, **kwargs)
        return tf_keras_fn(model, *args, **kwargs)
    return routed


sparsify = _route("sparsify")
strip = _route("strip")
get_masks = _route("get_masks")
set_masks = _route("set_masks")
apply_masks = _route("apply_masks")
get_weights = _route("get_weights")
masked_layers = _route("masked_layers")
sparsity_distribution = _route("sparsity_distribution")
sparsity_report = _route("sparsity_report")
output_keys = _route("output_keys")
check_masks_agree = _route("check_masks_agree")


def keras_of(model):
    """The Keras module ``model`` belongs to: ``keras`` (3) or ``tf_keras``."""
    if is_keras3(model):
        return sys.modules["keras"]
    from tf_lottery._keras import keras
    return keras


def set_random_seed(seed: int) -> None:
    """Seeds Python, numpy, TensorFlow and (once loaded) Keras 3's backend generator, so
    models of either Keras built after it draw the same initial weights every time."""
    from tf_lottery._keras import keras
    keras.utils.set_random_seed(seed)
    keras3 = loaded_keras3()
    if keras3 is not None:
        keras3.utils.set_random_seed(seed)


def live(model):
    """``model`` with its variables current: inside a JAX ``fit`` (a callback) Keras 3
    keeps the training state outside the model until synced; a no-op elsewhere."""
    if is_keras3(model):
        from tf_lottery.keras3 import api as keras3_api
        keras3_api.sync(model)
    return model


def build_optimizer(model) -> None:
    """Creates ``model.optimizer``'s per-weight state (slots) now, for either Keras."""
    if is_keras3(model):
        model.optimizer.build(model.trainable_variables)
        return
    from tf_lottery.masking import state
    state.build_optimizer(model)


def reset_optimizer(optimizer, iteration: int = 0, variables=None) -> None:
    """Gives ``optimizer`` (of either Keras) the state a fresh one would have, at
    ``iteration`` (see ``tf_lottery.masking.state.reset_optimizer``)."""
    if type(optimizer).__module__.startswith("keras."):  # Keras 3 (tf_keras: "tf_keras.")
        from tf_lottery.keras3 import state as keras3_state
        keras3_state.reset_optimizer(optimizer, iteration, variables)
        return
    from tf_lottery.masking import state
    state.reset_optimizer(optimizer, iteration, variables)
