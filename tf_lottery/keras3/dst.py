"""Dynamic sparse training on Keras 3 models: ``SparseOptimizer``, the one extension point.

``tfl.RigL``, ``SET``, ``SNFS``, ``StaticSparse`` and ``GradualMagnitudePruning`` run on a
Keras 3 model through this optimizer wrapper, in any training loop::

    opt = tfl.SparseOptimizer(keras.optimizers.Adam(1e-3), model,
                              tfl.RigL(delta_t=100, end_step=7500))
    model.compile(opt, loss)          # fit, or a custom loop calling opt.apply(grads)

As a ``model.fit`` callback (``callbacks=[tfl.RigL(...)]``) the method puts this wrapper
around the compiled optimizer for the fit call (``tf_lottery.keras3.dst_fit``).

One step (``apply``): the dense gradients of the masked weights are kept for the grow
rule, multiplied by the masks and applied by the wrapped optimizer (masked entries,
with zero gradient and zero state, stay 0); then, at the method's update steps (the same schedule and
``tf_lottery.dst.updaters`` rules as the tf_keras path, written once against
``tf_lottery.dst.arrays``), new masks are computed and written with
``tf_lottery.keras3.state.assign_mask``: dropped and grown weights and their optimizer
state become exactly 0, and every weight keeps its number of active entries. Where XLA
compiles the step (JAX; TensorFlow with ``jit_compile``), whose ``top_k`` of a long vector
costs a full sort on CPU, the selection thresholds come from counting passes instead
(``tf_lottery.dst.arrays``), with the same result.

The dense gradient (the tf_keras path's "gradient gate"): while a wrapper is live the
masked layers compute with the raw weights, which the wrapper keeps exactly 0 where
masked (``MaskedLayer.set_dense_gradients``), so every backward pass gives
dL/d(w * m) at no extra cost, and the wrapper masks it before the optimizer sees it.

Backends. On TensorFlow the update is a ``tf.cond`` with the writes inside (eager or in
``tf.function``); in a multi-replica ``tf.distribute`` step the dense gradients are summed
across replicas first and the update runs once, in cross-replica context
(``tf_lottery.keras3.replicas``). On JAX the step is stateless (``fit`` calls
``stateless_apply`` inside ``jax.jit``): the wrapper carries copies of the masks, the SNFS
momentum and the update statistics among its ``variables``, and the update is a functional
``ops.cond``. The model's own mask variables cannot be written from a stateless optimizer
step, so on JAX they are brought up to date by ``sync_masks()`` (the ``fit`` callback does it
at every epoch end; a custom JAX loop calls it after assigning its state back to the
variables).
"""
from typing import Optional

import keras
import numpy as np
from keras import ops

from tf_lottery.dst import arrays, updaters
from tf_lottery.keras3 import api, dst_writes, replicas, state

__all__ = ["SparseOptimizer"]


class _TracedAs:
    """``SparseOptimizer.traced_as``: sets the kind of step traced while it is entered (a
    plain class: ``fit`` enters one at every step, where a generator context costs more)."""

    __slots__ = ("optimizer", "kind", "previous")

    def __init__(self, optimizer, kind):
        self.optimizer, self.kind, self.previous = optimizer, kind, None

    def __enter__(self):
        self.previous = self.optimizer._traced_as
        object.__setattr__(self.optimizer, "_traced_as", self.kind)
        return self.optimizer

    def __exit__(self, *exc):
        object.__setattr__(self.optimizer, "_traced_as", self.previous)


class _Unit:
    """One masked, trainable weight taking part in the updates."""

    def __init__(self, index, key, layer, weight, mask):
        self.index, self.key, self.layer = index, key, layer
        self.weight, self.mask = weight, mask
        self.live = mask  # the mask the step reads and writes (JAX: the wrapper's copy)
        self.slots, self.fills = [], []
        self.momentum = None
        self.k_max = None  # active entries when the wrapper began (a top_k bound)
        self.k_change = None  # entries one update may drop or grow (a top_k bound)


class SparseOptimizer(keras.optimizers.Optimizer):
    """A Keras 3 optimizer that keeps masked weights at 0 and runs a mask-update method.

    Args:
      optimizer: a Keras 3 optimizer (``keras.optimizers.*``); its per-weight state is
        reset for dropped and grown weights.
      model: the built Keras 3 model whose ``MaskedLayer``s it updates (``tfl.sparsify``).
      method: ``tfl.RigL``, ``tfl.SET``, ``tfl.SNFS``, ``tfl.StaticSparse`` or
        ``tfl.GradualMagnitudePruning``; outside ``fit`` RigL-style methods need
        ``end_step=`` or ``total_steps=``. One method object serves one wrapper.

    ``iterations``, ``learning_rate`` and the optimizer state are the wrapped
    optimizer's; ``variables`` adds the wrapper's own (update statistics, SNFS momentum,
    and on JAX the mask copies). Create it before tracing the training step.
    ``update_traces`` counts how often the mask update was traced (or run eagerly).
    """

    def __init__(self, optimizer, model, method, name: Optional[str] = None):
        from tf_lottery.dst.callback import MaskUpdateCallback
        if isinstance(optimizer, SparseOptimizer):
            raise ValueError("optimizer is already a SparseOptimizer; wrap the plain optimizer "
                             "once")
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(f"optimizer must be a Keras 3 optimizer (keras.optimizers.*), got "
                            f"{type(optimizer).__name__}")
        if (isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
                and keras.config.backend() == "jax"):
            raise ValueError("SparseOptimizer does not support mixed_float16 loss scaling on "
                             "JAX yet; train in float32")
        if not isinstance(method, MaskUpdateCallback):
            raise TypeError("method must be tfl.RigL, tfl.SET, tfl.SNFS, tfl.StaticSparse or "
                            f"tfl.GradualMagnitudePruning, got {type(method).__name__}")
        if getattr(method, "_keras3_optimizer", None) is not None:
            raise ValueError(f"this {type(method).__name__} object already updates a model; "
                             "create one method object per SparseOptimizer")
        if not model.built:
            raise ValueError(f"model {model.name!r} is not built: call it once on a batch "
                             "(or build it) before wrapping its optimizer")
        with replicas.strategy_scope(model):  # tf.distribute: state mirrored like the model's
            super().__init__(learning_rate=0.0, name=name or "sparse_" + optimizer.name)
        self.inner_optimizer = optimizer
        method._check_schedule(method._total_steps())  # (in fit: the fit's length)
        method._check_model(model)
        # Plain attributes (object.__setattr__): the optimizer's tracker would otherwise
        # adopt the model's variables as optimizer variables.
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "installed_by", None)
        object.__setattr__(self, "update_traces", 0)
        object.__setattr__(self, "_traced_as", "either")
        object.__setattr__(self, "_due", (0, np.zeros(0, bool), None))
        object.__setattr__(self, "_xp", arrays.get(keras.config.backend()))
        object.__setattr__(self, "_units", self._find_units(model, method))
        object.__setattr__(method, "_keras3_optimizer", self)
        with replicas.strategy_scope(model):
            self.build(model.trainable_variables)

    @staticmethod
    def _find_units(model, method):
        """Every trainable masked weight (the wrapper masks their gradients); ``index`` is
        the position among those taking part in the updates (the seed's unit index, as on
        the tf_keras path), or None."""
        trainable = {id(v) for v in model.trainable_variables}
        units, taking_part = [], 0
        for layer in api.masked_layers(model):
            for wname, (weight, mask) in zip(layer.weight_names, layer.masked_weights):
                if id(weight) not in trainable:
                    continue
                index = None
                if method._takes_part(layer, wname):
                    index, taking_part = taking_part, taking_part + 1
                units.append(_Unit(index, f"{layer.layer.name}/{wname}", layer, weight, mask))
        if not taking_part:
            raise ValueError(f"{type(method).__name__}: model {model.name!r} has no trainable "
                             "masked weight to update; sparsify it first (tfl.sparsify)")
        return units

    @property
    def units(self):
        """The masked weights taking part in the updates, in model order."""
        return [u for u in self._units if u.index is not None]

    # -- state
    def build(self, var_list):
        if self.built:
            return
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        n = len(self.units)
        jax = keras.config.backend() == "jax"

        def variable(shape, dtype, name):  # tf.distribute: written equal on every replica
            return self.add_variable(shape, "zeros", dtype, aggregation="only_first_replica",
                                     name=name)
        stats = {
            "step": variable((), "int32", "dst_step"),
            "updates": variable((), "int32", "dst_updates"),
            "amount": variable((), "float32", "dst_amount"),
            "grown": variable((n,), "int32", "dst_grown"),
            "dropped": variable((n,), "int32", "dst_dropped"),
            "active": variable((n,), "int32", "dst_active"),
        }
        object.__setattr__(self, "stats", stats)
        optimizers = state.live_optimizers(None, self.inner_optimizer)
        for u in self._units:
            u.slots, u.fills = state.slots_of(optimizers, u.weight)
            if self.method.updater.needs_momentum and u.index is not None:
                u.momentum = variable(u.weight.shape, "float32", "dst_momentum")
            if jax:
                u.live = variable(u.mask.shape, u.mask.dtype, "dst_mask")
        super().build(var_list)
        self.begin()

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def begin(self) -> None:
        """Takes over the masking from the model's layers (dense gradients; on JAX the
        mask copies start from the model's masks). ``__init__`` calls it, and
        ``tfl.set_masks`` when this wrapper is the model's optimizer or its ``optimizer=``;
        call it again after ``release()``."""
        for u in self._units:
            if u.live is not u.mask:  # a copy: JAX's step must not get one buffer twice
                u.live.assign(ops.copy(u.mask.value))
            u.k_max, u.k_change = self.method._top_k_bounds(ops.convert_to_numpy(u.mask.value))
        live = {id(u.mask): u.live for u in self._units}
        for layer in {id(u.layer): u.layer for u in self._units}.values():
            layer.set_dense_gradients(True, [live.get(id(mask), mask)
                                             for _, mask in layer.masked_weights])

    def release(self) -> None:
        """Gives the masking back to the model's layers (after ``sync_masks``)."""
        self.sync_masks()
        for layer in {id(u.layer): u.layer for u in self._units}.values():
            layer.set_dense_gradients(False)

    def reset_statistics(self) -> None:
        """Forgets the updates so far (``last_update``, ``update_count``): ``fit`` does it
        when a method's next fit reuses this wrapper."""
        for variable in self.stats.values():
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def sync_masks(self) -> None:
        """Writes the step's mask copies into the model's masks (JAX; no-op on TF)."""
        for u in self._units:
            if u.live is not u.mask:
                u.mask.assign(ops.copy(u.live.value))

    # -- delegation
    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def scale_loss(self, loss):
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        raise NotImplementedError(
            "SparseOptimizer is not serialisable (it holds a model); save the model with "
            "include_optimizer=False, or save weights")

    # -- two compiled steps
    def traced_as(self, kind: str) -> "_TracedAs":
        """A context in which steps are traced as ``"ordinary"`` steps (never a mask update)
        or ``"update"`` steps (always one), instead of the default ``"either"`` (an in-step
        conditional on the schedule).

        Why: a compiled step pays for the conditional even where it skips the update:
        about 20% of a LeNet-300-100 step on JAX (XLA's CPU runtime charges for the untaken
        branch) and 3% on TensorFlow's graph executor. ``fit`` therefore compiles both
        kinds and calls the update one exactly at the steps where ``update_due(step)`` is
        True; a custom loop can do the same (trace and call each kind inside this context,
        as ``jax.jit`` and ``tf.function`` trace at the first call; ``tf.distribute``
        traces each replica in a thread of its own, which all read the kind set here).
        """
        if kind not in ("ordinary", "update", "either"):
            raise ValueError(f"kind must be 'ordinary', 'update' or 'either', not {kind!r}")
        return _TracedAs(self, kind)

    def update_due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based: ``iterations + 1`` when it runs)
        updates the masks, by the method's own schedule (evaluated for 1024 steps at a
        time on the host, again if the schedule changed)."""
        start, due, schedule = self._due
        if schedule != self.method._schedule_key() or not start <= step < start + len(due):
            xp = self._xp
            steps = xp.cast(xp.asarray(np.arange(step, step + 1024)), xp.int64)
            is_update, _ = self.method._schedule(steps, xp)
            due = np.broadcast_to(np.asarray(ops.convert_to_numpy(is_update), bool), (1024,))
            start = step
            object.__setattr__(self, "_due", (start, due, self.method._schedule_key()))
        return bool(due[step - start])

    # -- one step
    def apply(self, grads, trainable_variables=None):
        """Applies the masked gradients, then updates the masks if this step is due."""
        tvars = (self._trainable_variables if trainable_variables is None
                 else list(trainable_variables))
        grads = list(grads)
        xp, method = self._xp, self.method
        updater = method.updater
        step = xp.cast(xp.asarray(self.inner_optimizer.iterations.value), xp.int64) + 1
        by_id = {id(v): i for i, v in enumerate(tvars)}
        unit_grads = {}
        for u in self._units:
            i = by_id.get(id(u.weight))
            if i is None or grads[i] is None:  # the loss does not depend on this weight
                unit_grads[u.index] = ops.zeros(u.weight.shape, "float32")
                continue
            unit_grads[u.index] = ops.cast(grads[i], "float32")
            grads[i] = grads[i] * ops.cast(u.live.value, grads[i].dtype)
        unit_grads = self._global_gradients(unit_grads)
        units = self.units
        self.inner_optimizer.apply(grads, tvars)
        if not updater.updates:
            return
        if updater.needs_momentum:
            decay = method.momentum
            for u in units:
                g = unit_grads[u.index]
                u.momentum.assign(decay * u.momentum.value + (1.0 - decay) * g)
        if self._traced_as == "ordinary":
            return
        is_update, amount = method._schedule(step, xp)
        if self._traced_as == "update":
            is_update = None  # the caller runs this step exactly at update steps
        amount = xp.cast(amount, xp.float32)

        def new_masks():
            object.__setattr__(self, "update_traces", self.update_traces + 1)
            out = []
            for u in units:
                unit = updaters.UnitState(
                    weight=u.weight.value, mask=ops.cast(u.live.value, "float32"),
                    grad=unit_grads[u.index] if updater.needs_grad != updaters.GRAD_NEVER
                    else None,
                    momentum=u.momentum.value if u.momentum is not None else None,
                    seed=xp.unit_seed(method.seed, u.index, step), xp=xp, k_max=u.k_max,
                    k_change=u.k_change)
                out.append(ops.cast(updater.new_mask(unit, amount), "float32"))
            return out

        write = dst_writes.functional if keras.config.backend() == "jax" else dst_writes.stateful
        write(units, self.stats, is_update, amount, step, new_masks)

    def _global_gradients(self, unit_grads):
        """The dense gradients of the global batch: under a multi-replica ``tf.distribute``
        step, summed across replicas (when the method reads them); else unchanged."""
        updater = self.method.updater
        if updater.needs_grad == updaters.GRAD_NEVER and not updater.needs_momentum:
            return unit_grads
        return replicas.sum_over_replicas(unit_grads)

    # -- host side
    def last_update(self) -> Optional[dict]:
        """The most recent mask update: ``step``, the drop fraction (pruning:
        ``target_sparsity``), ``grown``/``dropped``/``active`` per weight key; or None."""
        if int(ops.convert_to_numpy(self.stats["updates"].value)) == 0:
            return None
        values = {k: np.asarray(ops.convert_to_numpy(v.value)) for k, v in self.stats.items()}
        return {"step": int(values["step"]),
                self.method.amount_name: float(values["amount"]),
                "grown": {u.key: int(values["grown"][u.index]) for u in self.units},
                "dropped": {u.key: int(values["dropped"][u.index]) for u in self.units},
                "active": {u.key: int(values["active"][u.index]) for u in self.units}}

    @property
    def update_count(self) -> int:
        """How many mask updates ran."""
        return int(ops.convert_to_numpy(self.stats["updates"].value))
