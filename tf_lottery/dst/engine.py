"""The mask-update engine: one method's in-graph mask updates on one model, driven from
an optimizer step (``MaskUpdateEngine.apply_gradients``).

Both ways of using a method go through it: the ``model.fit`` callbacks
(``tf_lottery.dst.callback``) call it from the train step they install, and
``tfl.SparseOptimizer`` (``tf_lottery.dst.optimizer``) calls it from its
``apply_gradients``, in any training loop. Given the same data order and seed, both
give the same masks.

One step (``apply_gradients``, in replica context)
--------------------------------------------------
1. ``step = optimizer.iterations + 1``; the method's schedule gives ``(is_update,
   amount)`` as tensors.
2. **One all-reduce, then the optimizer.** The gradients are all-reduced (summed) across
   replicas once, the masked weights' ones are multiplied by their masks, and the
   optimizer applies them with its own aggregation switched off: one all-reduce of the
   usual size per step, and no dense gradient ever reaches a masked weight's update.
3. **Mask update.** In cross-replica context (``merge_call``) a function runs on every
   replica's copy of the variables (``strategy.extended.update``); it does nothing
   unless this is an update step (a ``tf.cond`` of local ops only), else it computes the
   new masks from identical inputs (mirrored weights, all-reduced gradients, stateless
   seeds) and writes them with ``tf_lottery.masking.update.assign_mask``: dropped and
   grown weights and their optimizer slots (``optimizer_slots``) become 0. Every replica
   and worker therefore holds identical masks.

The dense gradient
------------------
RigL grows where the dense gradient dL/d(w * m) is largest; SNFS keeps its momentum.
The engine hands a boolean *gradient gate* variable to every ``MaskedLayer``
(``MaskedLayer.set_gradient_gate``): while it is True the backward pass gives the layer's
masked weights the dense gradient, else ``upstream * mask``. Step 3 sets the gate for
the next step (RigL: True iff the next step updates masks; SNFS: always), and
``prepare`` sets it for the first one. The gradients the user's loop computes are
therefore dense exactly at the steps that need it, and step 2 masks them before the
optimizer sees them. The gate is read when the backward pass runs, so a train function
traced once serves every step.

Unlike the RigL reference, which skips the weight update at a mask-update step, the
batch is used for the weight update first (as the reference's SET and SNFS do): a
skipped update cannot be expressed without putting the optimizer's cross-replica sync
inside a ``tf.cond``. Right after an update step, grown weights and their slots are 0.
There is no host round trip in the update path (TPU-safe by construction).
"""
from typing import Dict, List, Optional

import numpy as np

from tf_lottery._keras import tf
from tf_lottery.dst import updaters
from tf_lottery.masking import update as update_lib
from tf_lottery.masking.api import masked_layers
from tf_lottery.masking.state import _check_optimizer_type, _is_new, optimizer_slots
from tf_lottery.masking.wrapper import MaskedLayer

__all__ = ["MaskUpdateEngine"]


# Stores the gate on the layer without Keras' attribute tracking, which would make the
# variable a weight of the model (get_weights, h5 weight files).
class _Unit:
    """One masked, trainable weight taking part in the updates."""

    def __init__(self, index, key, layer, weight, mask, slots, fills):
        self.index, self.key, self.layer = index, key, layer
        self.weight, self.mask = weight, mask
        self.slots, self.fills = slots, fills
        self.momentum = None
        self.k_max = self.k_change = None  # top_k bounds (updaters.UnitState)


def _state_variable(value, dtype, name):
    """A variable written only inside ``strategy.extended.update`` (same on every replica)."""
    return tf.Variable(tf.constant(value, dtype), trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _build_optimizer(optimizer, variables, strategy):
    """Creates the optimizer's per-weight state (slots) now, under ``strategy``."""
    with strategy.scope():
        if _is_new(optimizer):
            optimizer.build(variables)
        else:
            # Legacy (OptimizerV2) optimizers have no public way to create their slots
            # before the first apply_gradients; the slots must exist to be reset.
            optimizer._create_all_weights(variables)


class MaskUpdateEngine:
    """The mask updates of one method (a ``MaskUpdateCallback``: RigL, SET, ...) on one model.

    The method gives the rule (``method.updater``), the schedule
    (``method._schedule(step) -> (is_update, amount)``), the seed and the weights taking
    part (``method._takes_part``). Call ``prepare`` once per model and optimizer (eager),
    then ``apply_gradients`` at every step (in replica context, eager or traced).

    Attributes:
      units: the masked weights taking part, in model order.
      gate: the gradient gate (a bool variable), or None if the method never needs the
        dense gradient.
      update_traces: how often the mask update was traced (one per replica per trace of
        the train function; every update when running eagerly).
    """

    def __init__(self, method):
        self.method = method
        self.model = None
        self.optimizer = None
        self.units: List[_Unit] = []
        self.gate: Optional[tf.Variable] = None
        self.stats: Dict[str, tf.Variable] = {}
        self.update_traces = 0

    @property
    def needs_grad(self) -> str:
        return self.method.updater.needs_grad

    def prepare(self, model, optimizer) -> None:
        """Finds the units and their optimizer slots, creates the engine's variables (once
        per model), and sets the gradient gate for the next step. Eager only."""
        layers = masked_layers(model)
        name = type(self.method).__name__
        if not layers:
            raise ValueError(f"{name}: model {model.name!r} has no MaskedLayer; sparsify it "
                             "first (tfl.sparsify), or wrap the layers of a subclassed model "
                             "with tfl.MaskedLayer")
        _check_optimizer_type(optimizer)
        tvars = model.trainable_variables
        trainable = {id(v) for v in tvars}
        candidates = []
        for layer in layers:
            for wname, (weight, mask) in zip(layer.weight_names, layer.masked_weights):
                if id(weight) in trainable and self.method._takes_part(layer, wname):
                    candidates.append((layer, f"{layer.layer.name}/{wname}", weight, mask))
        if not candidates:
            raise ValueError(f"{name}: model {model.name!r} has no trainable masked weight "
                             "to update")
        strategy = model.distribute_strategy
        _build_optimizer(optimizer, tvars, strategy)
        slots = optimizer_slots(optimizer, [c[2] for c in candidates])
        same = (self.model is model and len(self.units) == len(candidates)
                and all(u.weight is c[2] for u, c in zip(self.units, candidates)))
        if not same:
            self.units = [_Unit(i, key, layer, weight, mask, *slots[id(weight)])
                          for i, (layer, key, weight, mask) in enumerate(candidates)]
            self._create_variables(strategy)
            self.model = model
        else:
            for u in self.units:
                u.slots, u.fills = slots[id(u.weight)]
        for u in self.units:  # bounds for the step traced next (a larger count falls back)
            u.k_max, u.k_change = self.method._top_k_bounds(u.mask.numpy())
        self.optimizer = optimizer
        for layer in layers:
            layer.set_gradient_gate(self.gate)
        self.refresh_gate()

    def refresh_gate(self) -> None:
        """Sets the gradient gate for the optimizer's next step (eager). ``prepare`` and every
        step do it; call it after changing ``optimizer.iterations`` by hand (restoring a
        checkpoint into a live optimizer), or that step's gradient may not be dense."""
        if self.gate is not None:
            step = tf.cast(self.optimizer.iterations, tf.int64) + 1
            self.gate.assign(self._dense_at(step))

    def release(self) -> None:
        """Removes the gradient gate from the model's layers (masked gradients again)."""
        if self.model is not None and self.gate is not None:
            for layer in masked_layers(self.model):
                layer.set_gradient_gate(None)

    def _create_variables(self, strategy):
        n = len(self.units)
        with strategy.scope():
            self.stats = {
                "dense_steps": _state_variable(0, tf.int64, "dst_dense_steps"),
                "step": _state_variable(-1, tf.int64, "dst_step"),
                "amount": _state_variable(0.0, tf.float32, "dst_amount"),
                "grown": _state_variable([0] * n, tf.int32, "dst_grown"),
                "dropped": _state_variable([0] * n, tf.int32, "dst_dropped"),
                "active": _state_variable([0] * n, tf.int32, "dst_active"),
            }
            self.gate = (None if self.needs_grad == updaters.GRAD_NEVER
                         else _state_variable(False, tf.bool, "dst_gradient_gate"))
            if self.method.updater.needs_momentum:
                for u in self.units:
                    u.momentum = _state_variable(np.zeros(u.weight.shape, np.float32),
                                                 tf.float32, "dst_momentum")

    def _dense_at(self, step):
        """Whether the backward pass of optimizer step ``step`` must give dense gradients."""
        if self.needs_grad == updaters.GRAD_EVERY_STEP:
            return tf.constant(True)
        return tf.convert_to_tensor(self.method._schedule(step)[0])

    # -- one step (replica context)
    def apply_gradients(self, optimizer, grads_and_vars, aggregate: bool = True):
        """Masks and applies the gradients with ``optimizer``, then updates masks if due.

        Args:
          optimizer: the tf_keras optimizer given to ``prepare``.
          grads_and_vars: (gradient, variable) pairs as for ``optimizer.apply_gradients``;
            None gradients are skipped. Gradients of masked weights may be dense.
          aggregate: all-reduce (sum) the gradients across replicas first; False if the
            caller already did.

        Returns:
          What ``optimizer.apply_gradients`` returns.
        """
        replica = tf.distribute.get_replica_context()
        if replica is None:
            raise ValueError("apply_gradients must be called in a replica context (in your "
                             "step function, e.g. inside strategy.run), not in "
                             "cross-replica context")
        if self.model is None:
            raise ValueError("MaskUpdateEngine.prepare(model, optimizer) was not called")
        pairs = [(g, v) for g, v in grads_and_vars if g is not None]
        by_id = {id(v): i for i, (_, v) in enumerate(pairs)}
        grads = [g for g, _ in pairs]
        variables = [v for _, v in pairs]
        for u in self.units:
            if id(u.weight) in by_id:
                i = by_id[id(u.weight)]
                grads[i] = tf.convert_to_tensor(grads[i])
        step = tf.cast(optimizer.iterations, tf.int64) + 1
        updates = self.method.updater.updates  # False: static sparse, masks never change
        is_update, amount = self.method._schedule(step) if updates else (None, None)
        if aggregate and grads:
            grads = list(replica.all_reduce(tf.distribute.ReduceOp.SUM, grads))
        # The layers' backward pass already masked the gradients unless this step's gate
        # is open (dense gradients for the grow criterion): mask only then.
        dense = None if self.gate is None else tf.convert_to_tensor(self.gate)
        unit_grads = []
        for u in self.units:
            if id(u.weight) in by_id:
                i = by_id[id(u.weight)]
                unit_grads.append(grads[i])
                if dense is not None:
                    g, m = grads[i], tf.cast(u.mask, grads[i].dtype)
                    grads[i] = tf.cond(dense, lambda g=g, m=m: g * m, lambda g=g: g)
            else:  # the loss does not depend on this weight
                unit_grads.append(tf.zeros(u.weight.shape, u.weight.dtype))
        if _is_new(optimizer):
            result = optimizer.apply_gradients(list(zip(grads, variables)),
                                               skip_gradients_aggregation=True)
        else:
            result = optimizer.apply_gradients(list(zip(grads, variables)),
                                               experimental_aggregate_gradients=False)
        if not updates:
            return result
        if self.needs_grad == updaters.GRAD_NEVER:
            unit_grads = []
        replica.merge_call(self._cross_replica_update,
                           args=(step, tf.convert_to_tensor(is_update),
                                 tf.cast(amount, tf.float32), unit_grads))
        return result

    @tf.autograph.experimental.do_not_convert
    def _cross_replica_update(self, strategy, step, is_update, amount, unit_grads):
        return strategy.extended.update(
            self.units[0].mask, self._local_update,
            args=(step, is_update, amount, list(unit_grads)), group=True)

    @tf.autograph.experimental.do_not_convert
    def _local_update(self, _, step, is_update, amount, unit_grads):
        units, method, stats = self.units, self.method, self.stats
        updater = method.updater
        if self.gate is not None:
            stats["dense_steps"].assign_add(tf.cast(tf.convert_to_tensor(self.gate), tf.int64))
        if updater.needs_momentum:
            decay = tf.constant(method.momentum, tf.float32)
            for u, g in zip(units, unit_grads):
                u.momentum.assign(decay * u.momentum + (1.0 - decay) * tf.cast(g, tf.float32))

        def update():
            self.update_traces += 1
            grown, dropped, active = [], [], []
            for u in units:
                state = updaters.UnitState(
                    weight=tf.convert_to_tensor(u.weight), mask=tf.convert_to_tensor(u.mask),
                    grad=unit_grads[u.index] if unit_grads else None,
                    momentum=(tf.convert_to_tensor(u.momentum)
                              if u.momentum is not None else None),
                    seed=updaters.unit_seed(method.seed, u.index, step), k_max=u.k_max,
                    k_change=u.k_change)
                new = updater.new_mask(state, amount)
                g, d = update_lib.assign_mask(u.weight, u.mask, new, u.slots, u.fills)
                grown.append(g)
                dropped.append(d)
                active.append(tf.reduce_sum(tf.cast(new > 0.5, tf.int32)))
            stats["grown"].assign(tf.stack(grown))
            stats["dropped"].assign(tf.stack(dropped))
            stats["active"].assign(tf.stack(active))
            stats["amount"].assign(amount)
            stats["step"].assign(step)
            return tf.constant(True)

        done = tf.cond(is_update, update, lambda: tf.constant(False))
        if self.gate is not None:
            with tf.control_dependencies([done]):
                self.gate.assign(self._dense_at(step + 1))
        return done

    # -- host side
    def last_update(self) -> Optional[dict]:
        """The most recent mask update as a dict (``step``, the method's amount name,
        ``grown``/``dropped``/``active``: weight key -> count), or None before the first."""
        if not self.stats:
            return None
        step = int(self.stats["step"].numpy())
        if step < 0:
            return None
        grown, dropped, active = (self.stats[k].numpy() for k in ("grown", "dropped", "active"))
        return {"step": step,
                self.method.amount_name: float(self.stats["amount"].numpy()),
                "grown": {u.key: int(grown[u.index]) for u in self.units},
                "dropped": {u.key: int(dropped[u.index]) for u in self.units},
                "active": {u.key: int(active[u.index]) for u in self.units}}

    @property
    def dense_gradient_steps(self) -> int:
        """Steps whose backward pass ran with the gradient gate open (dense gradients)."""
        return int(self.stats["dense_steps"].numpy()) if self.stats else 0

