"""``tfl.SparseOptimizer``: dynamic sparse training in any training loop.

Wrap the optimizer; every ``apply_gradients`` (and ``minimize``) then applies the masked
update and, at the method's update steps, computes and writes new masks in graph::

    opt = tfl.SparseOptimizer(keras.optimizers.SGD(0.1, momentum=0.9), model,
                              tfl.RigL(delta_t=100, end_step=7500))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                model.trainable_variables))

It serves (b) custom loops with ``tf.GradientTape`` (eager or in a ``tf.function``, under
``strategy.run`` too), (c) models that override ``train_step`` (compile with it:
``model.compile(tfl.SparseOptimizer(...), loss)``; the step calls
``self.optimizer.apply_gradients`` or ``minimize``) and (d) subclassed models whose
layers are wrapped in ``tfl.MaskedLayer``. The step logic is ``MaskUpdateEngine``
(``tf_lottery.dst.engine``), the same as the ``model.fit`` callbacks': same data order
and seed give the same masks.

The wrapper is a ``keras.optimizers.Optimizer`` that delegates to the wrapped one,
checkpoints included (like Keras' ``LossScaleOptimizer``): a checkpoint of a model
compiled with it holds exactly the wrapped optimizer's variables. Create it after the
model is built and before tracing the train step (it hands the layers their gradient
gate, which a trace captures). The gate is set one step ahead from the step count: after
restoring a checkpoint into a live wrapper, call ``refresh_gate()``.
"""
from typing import Optional

from tf_lottery._keras import keras, tf
from tf_lottery.dispatch import is_keras3
from tf_lottery.dst.callback import MaskUpdateCallback
from tf_lottery.masking.state import _check_optimizer_type

__all__ = ["SparseOptimizer"]


# tf.__internal__'s DelegatingTrackableMixin is what Keras' own LossScaleOptimizer uses to
# make a wrapper checkpoint as the wrapped optimizer; no public API delegates checkpoints.
class SparseOptimizer(tf.__internal__.tracking.DelegatingTrackableMixin,
                      keras.optimizers.Optimizer):
    """An optimizer that keeps masked weights at 0 and runs a mask-update method.

    Args:
      optimizer: a tf_keras optimizer (``keras.optimizers.*`` or ``.legacy.*``; not a
        ``LossScaleOptimizer``). Its slots are reset for dropped and grown weights.
      model: the built model whose ``MaskedLayer``s it updates (from ``tfl.sparsify``, or a
        subclassed model holding ``tfl.MaskedLayer(layer)`` attributes). A Keras 3 model
        gives a ``tf_lottery.keras3.SparseOptimizer`` instead (for Keras 3 optimizers).
      method: ``tfl.RigL``, ``tfl.SET``, ``tfl.SNFS``, ``tfl.StaticSparse`` or
        ``tfl.GradualMagnitudePruning``, configured as for ``fit``; without fit's
        ``epochs * steps``, RigL-style methods need ``end_step=`` or ``total_steps=``.
        One method object serves one wrapper.

    ``apply_gradients(grads_and_vars)`` must run in a replica context (as Keras'
    optimizers require); it all-reduces the gradients across replicas itself (pass
    ``skip_gradients_aggregation=True`` if you did). ``iterations``, ``learning_rate``,
    ``variables`` and ``build`` are the wrapped optimizer's.
    """

    def __new__(cls, optimizer=None, model=None, method=None, *args, **kwargs):
        if is_keras3(model):  # a Keras 3 model: the Keras 3 optimizer wrapper
            from tf_lottery.keras3.dst import SparseOptimizer as Keras3SparseOptimizer
            return Keras3SparseOptimizer(optimizer, model, method, *args, **kwargs)
        return super().__new__(cls)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def __init__(self, optimizer, model, method: MaskUpdateCallback):
        if isinstance(optimizer, SparseOptimizer):
            raise ValueError("optimizer is already a SparseOptimizer; wrap the plain optimizer "
                             "once")
        if optimizer is None:
            raise ValueError("optimizer is None; pass the optimizer to wrap, e.g. "
                             "keras.optimizers.SGD(0.1, momentum=0.9)")
        _check_optimizer_type(optimizer)
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a tf_keras Model, got {type(model).__name__}")
        if not isinstance(method, MaskUpdateCallback):
            raise TypeError("method must be tfl.RigL, tfl.SET, tfl.SNFS, tfl.StaticSparse or "
                            f"tfl.GradualMagnitudePruning, got {type(method).__name__}")
        if method.engine.model is not None:
            raise ValueError(f"this {type(method).__name__} object already updates a model; "
                             "create one method object per SparseOptimizer")
        if model.dtype_policy.name == "mixed_float16":
            raise ValueError("SparseOptimizer does not support mixed_float16 yet (Keras would "
                             "wrap it in a LossScaleOptimizer); train in float32")
        if not model.built:
            raise ValueError(f"model {model.name!r} is not built: call it once on a batch "
                             "(or build it) before wrapping its optimizer")
        self._optimizer = optimizer
        tf.__internal__.tracking.DelegatingTrackableMixin.__init__(self, optimizer)
        self.method = method
        method._check_schedule(method.total_steps)
        method._check_model(model)
        method.engine.prepare(model, optimizer)

    @property
    def inner_optimizer(self):
        """The wrapped optimizer."""
        return self._optimizer

    def apply_gradients(self, grads_and_vars, name=None, skip_gradients_aggregation=False,
                        **kwargs):
        """Applies the masked gradients, then updates the masks if this step is due."""
        del name
        aggregate = (not skip_gradients_aggregation
                     and kwargs.pop("experimental_aggregate_gradients", True))
        return self.method.engine.apply_gradients(self._optimizer, list(grads_and_vars),
                                                  aggregate=aggregate)

    def minimize(self, loss, var_list, tape=None):
        grads_and_vars = self._optimizer.compute_gradients(loss, var_list, tape)
        self.apply_gradients(grads_and_vars)

    def compute_gradients(self, loss, var_list, tape=None):
        return self._optimizer.compute_gradients(loss, var_list, tape)

    def refresh_gate(self) -> None:
        """Call after restoring a checkpoint into this live wrapper (or setting
        ``iterations``): the dense-gradient gate is set one step ahead, from the step count."""
        self.method.engine.refresh_gate()

    def last_update(self) -> Optional[dict]:
        """The most recent mask update (host side): ``step``, the drop fraction (pruning:
        ``target_sparsity``), ``grown``/``dropped``/``active`` per weight key; or None."""
        return self.method.engine.last_update()

    # -- delegation
    @property
    def iterations(self):
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self._optimizer.iterations = variable

    @property
    def variables(self):
        return self._optimizer.variables

    def build(self, var_list):
        if hasattr(self._optimizer, "build"):
            return self._optimizer.build(var_list)
        return None

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self._optimizer.learning_rate = learning_rate

    @property
    def use_ema(self):
        return getattr(self._optimizer, "use_ema", False)

    def finalize_variable_values(self, var_list):
        if hasattr(self._optimizer, "finalize_variable_values"):
            self._optimizer.finalize_variable_values(var_list)

    def get_config(self):
        raise NotImplementedError(
            "SparseOptimizer is not serialisable (it holds a model); save the model with "
            "include_optimizer=False or save weights and checkpoints (tf.train.Checkpoint "
            "stores the wrapped optimizer's variables)")
