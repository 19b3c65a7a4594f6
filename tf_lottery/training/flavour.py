"""Which Keras the binary's models and optimizers are built with: tf_keras (2) or Keras 3.

``tf-lottery train --keras=3 --backend=jax`` (or gin: ``train.keras = 3``,
``train.backend = 'jax'``) builds the gin-selected model (``tf_lottery.training.models``)
and optimizer (``make_optimizer``) with Keras 3 on that backend; everything downstream
(IMP, rewinding, masks) looks at the model it is given. Keras 3 fixes its backend when
it is first imported (from ``KERAS_BACKEND``), so the binary sets the variable before
TensorFlow loads (``tf_lottery._backend``) and restarts itself when only gin names the
backend.
"""
import contextlib
import os
from typing import Optional

from tf_lottery._backend import BACKENDS
from tf_lottery._keras import loaded_keras3

KERAS_VERSIONS = (2, 3)
_current = [2]


def check_keras(version) -> int:
    """``version`` (2 or 3, int or str) as an int; ValueError naming the fix otherwise."""
    if str(version).strip() not in ("2", "3"):
        raise ValueError(f"keras must be 2 (tf_keras) or 3 (keras>=3), got {version!r}: "
                         "pass --keras=2 or --keras=3 (gin: train.keras = 3)")
    return int(str(version).strip())


def check_backend(name) -> str:
    """``name`` if it is a Keras 3 backend; ValueError naming the fix otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"unknown Keras backend {name!r}: use --backend=tensorflow, "
                         "--backend=jax or --backend=torch (gin: train.backend = 'jax')")
    return name


def loaded_backend() -> Optional[str]:
    """The backend of the Keras 3 already imported in this process, else None."""
    keras = loaded_keras3()
    return None if keras is None else keras.config.backend()


def select_backend(name: str) -> None:
    """Makes Keras 3 load with backend ``name``: sets ``KERAS_BACKEND`` if Keras is not
    imported yet; ValueError with the fix if it is, with another backend."""
    check_backend(name)
    loaded = loaded_backend()
    if loaded is None:
        os.environ["KERAS_BACKEND"] = name
    elif loaded != name:
        raise ValueError(
            f"Keras 3 is already loaded with the {loaded} backend in this process and "
            f"cannot switch to {name}: start a new process with --backend={name} (the "
            f"tf-lottery binary sets it before Keras loads) or KERAS_BACKEND={name}")


@contextlib.contextmanager
def use(version):
    """Within the block, ``keras_module()`` is Keras ``version`` (2 or 3)."""
    previous = _current[0]
    _current[0] = check_keras(version)
    try:
        yield
    finally:
        _current[0] = previous


def keras_module():
    """The Keras module models and optimizers are built with: ``tf_keras`` by default,
    ``keras`` (3) inside ``use(3)``."""
    if _current[0] == 3:
        import keras
        return keras
    from tf_lottery._keras import keras
    return keras
