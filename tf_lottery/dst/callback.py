"""Dynamic sparse training callbacks: ``RigL``, ``SET``, ``SNFS``, ``StaticSparse`` and
``GradualMagnitudePruning``, over the ``MaskedLayer``s of a sparsified tf_keras model.

Usage::

    model = tfl.sparsify(model, 0.9, distribution="erk", seed=0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss, metrics)
    model.fit(data, epochs=..., callbacks=[tfl.RigL(delta_t=100, alpha=0.3)])

How it works
------------
A Keras callback never sees the batch, but RigL needs the gradient of the loss on the
current batch. So in ``on_train_begin`` the callback installs its own ``train_step`` on
the model (an instance attribute; Keras' default ``train_step`` is restored in
``on_train_end``) and rebuilds the model's train function once. The installed step is
Keras' default step (forward, ``compute_loss``, gradients, optimizer, ``compute_metrics``)
with three changes, all inside the one compiled train function:

1. **Dense gradient only at update steps.** ``tf.cond`` on the optimizer's iteration
   counter picks between two versions of the forward/backward pass: the usual masked one,
   or, at update steps, one traced under ``unmasked_forward()``, whose gradient with
   respect to each weight variable is the dense gradient dL/d(w * m) (the forward output
   is the same because masked weights are exactly 0). Both versions cost the same here;
   only the chosen one runs. SNFS needs the dense gradient at every step (for its
   momentum); SET and gradual magnitude pruning never.
2. **One all-reduce, then the optimizer.** The step all-reduces (sums) the gradients
   across replicas itself, *outside* the ``tf.cond`` (a cross-replica sync may not sit
   inside control flow under ``MirroredStrategy``), multiplies the masked weights' ones by
   their masks, and hands them to the optimizer with its own aggregation switched off. So
   every step does exactly one all-reduce of the usual size, as Keras does, and the
   growth criterion sees the globally aggregated gradient.
3. **Mask update after the optimizer step.** In cross-replica context (``merge_call``)
   a function runs on every replica's copy of the variables (``strategy.extended.update``);
   it does nothing unless this is an update step (a ``tf.cond`` holding only local ops),
   else it computes the new masks from identical inputs (mirrored weights, all-reduced
   gradients, stateless seeds) and writes them with
   ``tf_lottery.masking.update.assign_mask``: dropped and grown weights and their
   optimizer slots become 0. Every replica and worker therefore holds identical masks.
   Unlike the RigL reference, which skips the weight update at a mask-update step, the
   batch is used for the weight update first (as the reference's SET and SNFS do): a
   skipped update cannot be expressed without putting the optimizer's cross-replica sync
   inside a ``tf.cond``. Right after an update step, grown weights and their slots are 0.

There is no host round trip, numpy or Python-side decision in the update path (TPU-safe
by construction); the update is traced once with the train function and is not retraced
between updates (``callback.update_traces`` counts traces, one per replica).

Steps: ``step`` is the number of optimizer steps taken once the current one is applied
(``optimizer.iterations + 1``). Updates happen at ``step = delta_t, 2 delta_t, ...`` while
``step <= end_step``, dropping ``f(step)`` of the active weights of every masked weight.

The installed step is removed in ``on_train_end``, and at the latest when the next ``fit``
call begins (if a fit raised before ``on_train_end``).

Limitations: models with their own ``train_step``, ``LossScaleOptimizer`` (mixed
precision) and optimizers whose per-weight state is not shaped like the weight
(Adafactor) are refused with an error; SNFS's momentum and the update statistics live in
the callback, not in model checkpoints; with ``steps_per_execution > 1`` only the last
update of each execution is logged. RigL's ``tf.cond`` holds the forward pass, so layers
that synchronise replicas in their forward pass (``BatchNormalization(synchronized=True)``)
are expected to fail with RigL under ``MirroredStrategy`` (untested; SET, SNFS and pruning
have no cond there). TPUStrategy has not been run (no TPU here); nothing in the path is known to stop it.
"""
import contextlib
import os
from typing import Dict, List, Optional, Sequence

import gin
import numpy as np

from tf_lottery._keras import keras, tf, tfmot
from tf_lottery.dst import schedules, updaters
from tf_lottery.masking import update as update_lib
from tf_lottery.masking.api import masked_layers
from tf_lottery.masking.state import (_check_optimizer_type, _is_new, build_optimizer,
                                      optimizer_slots)
from tf_lottery.masking.wrapper import unmasked_forward

__all__ = ["MaskUpdateCallback", "RigL", "SET", "SNFS", "StaticSparse",
           "GradualMagnitudePruning", "optimizer_slots"]

_INSTALLED = "_tf_lottery_mask_update_callback"


# --------------------------------------------------------------------------- the callback

class _Unit:
    """One masked, trainable weight taking part in the updates."""

    def __init__(self, index, key, layer, weight, mask, tvar_index, slots, fills):
        self.index, self.key, self.layer = index, key, layer
        self.weight, self.mask, self.tvar_index = weight, mask, tvar_index
        self.slots, self.fills = slots, fills
        self.momentum = None
        self.size = int(np.prod(weight.shape))


def _check_int(value, what, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return int(value)


def _state_variable(value, dtype, name):
    return tf.Variable(tf.constant(value, dtype), trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_WRITE,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class MaskUpdateCallback(keras.callbacks.Callback):
    """Base class: installs a train step that updates masks in-graph (see module doc).

    Subclasses give an ``updaters.Updater`` and implement ``_schedule(step)`` returning
    ``(is_update, amount)`` tensors (amount: drop fraction, or target sparsity for
    pruning) and ``_check_schedule(total_steps)``.

    Attributes (after training):
      history: one dict per logged update: ``step``, ``drop_fraction`` (pruning:
        ``target_sparsity``), and ``grown``, ``dropped``, ``active``: weight key -> count.
      update_traces: how often the update was traced (one per replica per ``fit``).
      dense_gradient_steps: how many train steps computed the dense gradient (RigL: the
        update steps only; SNFS: every step; SET, pruning: none).
    """

    updater: updaters.Updater = updaters.StaticUpdater()
    amount_name = "drop_fraction"

    def __init__(self, *, seed: int = 0, total_steps: Optional[int] = None,
                 log_dir: Optional[str] = None, verbose: int = 0):
        super().__init__()
        self.seed = _check_int(seed, "seed", minimum=0)
        self.total_steps = _check_int(total_steps, "total_steps", allow_none=True)
        self.log_dir = log_dir
        self.verbose = int(verbose)
        self.history: List[Dict] = []
        self.update_traces = 0
        self._units: List[_Unit] = []
        self._stats = None
        self._stats_model = None
        self._writer = None
        self._installed = False
        self._last_logged = 0
        self._py_step = 0
        self._epoch_start = 0

    @property
    def dense_gradient_steps(self) -> int:
        """Steps (of all fit calls) whose train step computed the dense gradient."""
        return 0 if self._stats is None else int(self._stats["dense_steps"].numpy())

    # -- hooks for subclasses
    def _schedule(self, step):
        raise NotImplementedError

    def _check_schedule(self, total_steps: Optional[int]) -> None:
        pass

    def _next_update_after(self, step: int) -> Optional[int]:
        """Host-side: the first update step > ``step`` (for logging only), or None."""
        return None

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        model = self.model
        layers = masked_layers(model)
        if not layers:
            raise ValueError(f"{type(self).__name__}: model {model.name!r} has no MaskedLayer; "
                             "sparsify it first (tfl.sparsify)")
        _check_optimizer_type(model.optimizer)
        total = self.total_steps
        if total is None and self.params:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if steps is not None and epochs is not None:
                total = int(steps) * int(epochs)
        self._check_schedule(total)
        if self.updater.updates:
            self._prepare(model, layers)
            self._install(model)
        self._py_step = int(model.optimizer.iterations.numpy())
        self._epoch_start = self._py_step
        self._last_logged = self._py_step
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "dst"))
            self._log_sparsity(self._py_step)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._py_step

    def on_train_batch_end(self, batch, logs=None):
        self._py_step = self._epoch_start + int(batch) + 1
        if not self.updater.updates:
            return
        nxt = self._next_update_after(self._last_logged)
        if nxt is not None and self._py_step >= nxt:
            self._collect()

    def on_train_end(self, logs=None):
        if self._installed:
            self._collect()
            self._uninstall(self.model)
        if self.log_dir:
            from tf_lottery.plots import plot_layer_sparsity
            from tf_lottery.masking.api import sparsity_report
            plot_layer_sparsity(sparsity_report(self.model),
                                os.path.join(self.log_dir, "layer_sparsity.png"),
                                title=f"{type(self).__name__}: per-layer sparsity")
            if self._writer is not None:
                self._writer.flush()

    # -- setup
    def _prepare(self, model, layers):
        if type(model).train_step is not keras.Model.train_step:
            raise ValueError(
                f"model {model.name!r} overrides train_step; {type(self).__name__} installs its "
                "own train step (to see the batch's dense gradient) and cannot combine with a "
                "custom one")
        other = model.__dict__.get(_INSTALLED)
        # Callbacks of one fit call share one params dict; an entry from another fit call
        # is stale (that fit raised before on_train_end) and is replaced.
        if other is not None and other[0] is not self and other[1] is self.params:
            raise ValueError("another mask-update callback is already active on this model; "
                             "use one of RigL, SET, SNFS, GradualMagnitudePruning at a time")
        build_optimizer(model)
        tvars = model.trainable_variables
        tindex = {id(v): i for i, v in enumerate(tvars)}
        candidates = []
        for layer in layers:
            for name, (weight, mask) in zip(layer.weight_names, layer.masked_weights):
                if id(weight) in tindex and self._takes_part(layer, name):
                    candidates.append((layer, f"{layer.layer.name}/{name}", weight, mask))
        if not candidates:
            raise ValueError(f"{type(self).__name__}: model {model.name!r} has no trainable "
                             "masked weight to update")
        slots = optimizer_slots(model.optimizer, [c[2] for c in candidates])
        if self._stats_model is not model or len(self._units) != len(candidates):
            self._units = [
                _Unit(i, key, layer, weight, mask, tindex[id(weight)], *slots[id(weight)])
                for i, (layer, key, weight, mask) in enumerate(candidates)]
            with model.distribute_strategy.scope():
                n = len(self._units)
                self._stats = {
                    # replica-local (no sync when written inside the dense-gradient branch)
                    "dense_steps": tf.Variable(
                        tf.constant(0, tf.int64), trainable=False, name="dst_dense_steps",
                        synchronization=tf.VariableSynchronization.ON_READ,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA),
                    "step": _state_variable(-1, tf.int64, "dst_step"),
                    "amount": _state_variable(0.0, tf.float32, "dst_amount"),
                    "grown": _state_variable([0] * n, tf.int32, "dst_grown"),
                    "dropped": _state_variable([0] * n, tf.int32, "dst_dropped"),
                    "active": _state_variable([0] * n, tf.int32, "dst_active"),
                }
                if self.updater.needs_momentum:
                    for u in self._units:
                        u.momentum = tf.Variable(
                            tf.zeros(u.weight.shape, tf.float32), trainable=False,
                            name="dst_momentum",
                            synchronization=tf.VariableSynchronization.ON_WRITE,
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            self._stats_model = model
        else:
            for u, (layer, key, weight, mask) in zip(self._units, candidates):
                u.tvar_index = tindex[id(weight)]
                u.slots, u.fills = slots[id(weight)]
        self._tvar_count = len(tvars)

    def _takes_part(self, layer, weight_name) -> bool:
        return True

    def _install(self, model):
        """Puts this callback's train step on ``model`` for the current fit call.

        ``fit`` builds its train function (``make_train_function``) *before* calling
        ``on_train_begin``, so the train function is rebuilt here. The instance's
        ``make_train_function`` is replaced too, by one that first removes the installed
        step: the next ``fit`` (or ``train_on_batch``) starts from Keras' own step even if
        this fit raised before ``on_train_end``.
        """
        def make_default_train_function(force=False):
            self._uninstall(model)
            return model.make_train_function(force=force)

        object.__setattr__(model, "train_step", self._train_step)
        object.__setattr__(model, "make_train_function", make_default_train_function)
        object.__setattr__(model, _INSTALLED, (self, self.params))
        model.train_function = type(model).make_train_function(model, force=True)
        self._installed = True

    def _uninstall(self, model):
        if model.__dict__.get(_INSTALLED, (None,))[0] is self:
            for name in ("train_step", "make_train_function", _INSTALLED):
                model.__dict__.pop(name, None)
            model.train_function = None
        self._installed = False

    # -- the train step (replica context)
    @tf.autograph.experimental.do_not_convert
    def _train_step(self, data):
        model = self.model
        optimizer = model.optimizer
        units = self._units
        tvars = model.trainable_variables
        if len(tvars) != self._tvar_count:
            raise ValueError("the model's trainable variables changed after training began")
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = tf.cast(optimizer.iterations, tf.int64) + 1
        is_update, amount = self._schedule(step)
        missing: List[bool] = []

        def forward_backward(dense: bool):
            ctx = unmasked_forward() if dense else contextlib.nullcontext()
            with ctx:
                if dense:
                    self._stats["dense_steps"].assign_add(1)
                with tf.GradientTape() as tape:
                    y_pred = model(x, training=True)
                    loss = model.compute_loss(x, y, y_pred, sample_weight)
                grads = tape.gradient(loss, tvars)
            missing[:] = [g is None for g in grads]
            grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, tvars)]
            for u in units:
                grads[u.tvar_index] = tf.convert_to_tensor(grads[u.tvar_index])
            return loss, y_pred, grads

        mode = self.updater.needs_grad
        if mode == updaters.GRAD_AT_UPDATES:
            loss, y_pred, grads = tf.cond(is_update, lambda: forward_backward(True),
                                          lambda: forward_backward(False))
        else:
            loss, y_pred, grads = forward_backward(mode == updaters.GRAD_EVERY_STEP)
        if hasattr(model, "_validate_target_and_loss"):
            model._validate_target_and_loss(y, loss)

        present = [i for i, m in enumerate(missing) if not m]
        replica = tf.distribute.get_replica_context()
        reduced = replica.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        by_index = dict(zip(present, reduced))
        # Dense (at update steps) and all-reduced; zeros for a weight the loss ignores.
        unit_grads = [by_index[u.tvar_index] if u.tvar_index in by_index
                      else tf.zeros(u.weight.shape, u.weight.dtype) for u in units]
        for u in units:
            if u.tvar_index in by_index:
                g = by_index[u.tvar_index]
                by_index[u.tvar_index] = g * tf.cast(u.mask, g.dtype)
        pairs = [(by_index[i], tvars[i]) for i in present]
        if _is_new(optimizer):
            optimizer.apply_gradients(pairs, skip_gradients_aggregation=True)
        else:
            optimizer.apply_gradients(pairs, experimental_aggregate_gradients=False)

        if mode == updaters.GRAD_NEVER:
            unit_grads = []
        replica.merge_call(self._cross_replica_update,
                           args=(step, is_update, tf.cast(amount, tf.float32), unit_grads))
        return model.compute_metrics(x, y, y_pred, sample_weight)

    # -- the mask update (cross-replica context, then per replica)
    @tf.autograph.experimental.do_not_convert
    def _cross_replica_update(self, strategy, step, is_update, amount, unit_grads):
        return strategy.extended.update(
            self._units[0].mask, self._local_update,
            args=(step, is_update, amount, list(unit_grads)), group=True)

    @tf.autograph.experimental.do_not_convert
    def _local_update(self, _, step, is_update, amount, unit_grads):
        units = self._units
        updater = self.updater
        if updater.needs_momentum:
            decay = tf.constant(self.momentum, tf.float32)
            for u, g in zip(units, unit_grads):
                u.momentum.assign(decay * u.momentum + (1.0 - decay) * tf.cast(g, tf.float32))

        def update():
            self.update_traces += 1
            grown, dropped, active = [], [], []
            for u in units:
                mask = tf.convert_to_tensor(u.mask)
                state = updaters.UnitState(
                    weight=tf.convert_to_tensor(u.weight), mask=mask,
                    grad=unit_grads[u.index] if unit_grads else None,
                    momentum=(tf.convert_to_tensor(u.momentum)
                              if u.momentum is not None else None),
                    seed=updaters.unit_seed(self.seed, u.index, step))
                new = updater.new_mask(state, amount)
                g, d = update_lib.assign_mask(u.weight, u.mask, new, u.slots, u.fills)
                grown.append(g)
                dropped.append(d)
                active.append(tf.reduce_sum(tf.cast(new > 0.5, tf.int32)))
            stats = self._stats
            stats["grown"].assign(tf.stack(grown))
            stats["dropped"].assign(tf.stack(dropped))
            stats["active"].assign(tf.stack(active))
            stats["amount"].assign(amount)
            stats["step"].assign(step)
            return tf.constant(True)

        return tf.cond(is_update, update, lambda: tf.constant(False))

    # -- observability (host side, outside the update path)
    def _collect(self):
        if self._stats is None:
            return
        step = int(self._stats["step"].numpy())
        if step <= self._last_logged:  # no update since the last record
            self._last_logged = max(self._last_logged, self._py_step)
            return
        self._last_logged = step
        grown = self._stats["grown"].numpy()
        dropped = self._stats["dropped"].numpy()
        active = self._stats["active"].numpy()
        record = {"step": step, self.amount_name: float(self._stats["amount"].numpy()),
                  "grown": {u.key: int(grown[u.index]) for u in self._units},
                  "dropped": {u.key: int(dropped[u.index]) for u in self._units},
                  "active": {u.key: int(active[u.index]) for u in self._units}}
        self.history.append(record)
        if self.verbose:
            print(f"{type(self).__name__} step {step}: {self.amount_name} "
                  f"{record[self.amount_name]:.4f}, {int(grown.sum())} grown, "
                  f"{int(dropped.sum())} dropped")
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.scalar(f"dst/{self.amount_name}", record[self.amount_name], step=step)
                tf.summary.scalar("dst/connections_changed", int(grown.sum() + dropped.sum()),
                                  step=step)
                for u in self._units:
                    tf.summary.scalar(f"dst/connections_changed/{u.key}",
                                      int(grown[u.index] + dropped[u.index]), step=step)
            self._log_sparsity(step)

    def _log_sparsity(self, step):
        if self._writer is None:
            return
        total_active = total_size = 0
        with self._writer.as_default():
            for layer in masked_layers(self.model):
                for name, (_, mask) in zip(layer.weight_names, layer.masked_weights):
                    values = mask.numpy()
                    active = int(np.count_nonzero(values))
                    total_active += active
                    total_size += values.size
                    tf.summary.scalar(f"dst/sparsity/{layer.layer.name}/{name}",
                                      1.0 - active / values.size, step=step)
            if total_size:
                tf.summary.scalar("dst/sparsity/total", 1.0 - total_active / total_size,
                                  step=step)


class _DropGrowCallback(MaskUpdateCallback):
    """Shared by RigL, SET, SNFS and StaticSparse: the drop-fraction schedule."""

    def __init__(self, delta_t: int = 100, end_step: Optional[int] = None, alpha: float = 0.3,
                 decay="cosine", *, seed: int = 0, total_steps: Optional[int] = None,
                 log_dir: Optional[str] = None, verbose: int = 0,
                 structure: str = "unstructured"):
        super().__init__(seed=seed, total_steps=total_steps, log_dir=log_dir, verbose=verbose)
        self.updater = type(self.updater)(structure)
        self.delta_t = _check_int(delta_t, "delta_t")
        self.end_step = _check_int(end_step, "end_step", allow_none=True)
        self.alpha = schedules.check_alpha(alpha)
        self.decay = decay
        self._decay_fn = schedules.get(decay)
        self._end = self.end_step

    def _check_schedule(self, total_steps):
        if self.end_step is None:
            if total_steps is None:
                raise ValueError(
                    f"{type(self).__name__}: the number of training steps is unknown (fit "
                    "without steps_per_epoch on a dataset of unknown size); pass end_step= "
                    "or total_steps=")
            self._end = max(1, int(round(0.75 * total_steps)))
        else:
            if total_steps is not None and self.end_step > total_steps:
                raise ValueError(
                    f"{type(self).__name__}: end_step={self.end_step} is beyond the end of "
                    f"training ({total_steps} steps = epochs x steps per epoch); updates stop "
                    "at end_step, so it must be at most the number of training steps (RigL "
                    "uses 75% of training). Pass total_steps= if you call fit several times")
            self._end = self.end_step

    def drop_fraction(self, step):
        """f(step) of this callback's schedule (numbers or tensors)."""
        return self._decay_fn(step, self.alpha, self._end)

    def _schedule(self, step):
        delta = tf.constant(self.delta_t, tf.int64)
        is_update = tf.logical_and(tf.equal(tf.math.floormod(step, delta), 0),
                                   tf.less_equal(step, tf.constant(self._end, tf.int64)))
        return is_update, tf.cast(self.drop_fraction(step), tf.float32)

    def _next_update_after(self, step):
        nxt = (int(step) // self.delta_t + 1) * self.delta_t
        return nxt if nxt <= self._end else None


class RigL(_DropGrowCallback):
    """RigL (Evci et al. 2020): every ``delta_t`` steps until ``end_step``, drop the
    ``f(t)`` fraction of active weights with the smallest magnitude in every masked weight
    and grow as many where the dense gradient of the loss on the current batch is largest.

    Args:
      delta_t: steps between mask updates (>= 1; 100 in the paper).
      end_step: last step that may update masks; default 75% of the training steps
        (``epochs * steps_per_epoch`` of the fit call, or ``total_steps``).
      alpha: initial drop fraction, in (0, 1] (0.3).
      decay: ``"cosine"`` (default), ``"linear"``, ``"constant"`` or a callable
        ``f(step, alpha, end_step)``; see ``tf_lottery.dst.schedules``.
      seed: seed of the stateless tie-breaking (and SET's random growth).
      total_steps: training length in optimizer steps, if fit is called several times.
      log_dir: if set, TensorBoard scalars per update under ``log_dir/dst`` (drop fraction,
        per-layer sparsity, connections changed) and ``log_dir/layer_sparsity.png``.
      verbose: print one line per update.
      structure: ``"constant_fan_in"`` drops and grows per output unit, keeping a mask
        from ``tfl.sparsify(..., structure="constant_fan_in")`` constant fan-in.
    """

    updater = updaters.RigLUpdater()


class SET(_DropGrowCallback):
    """SET (Mocanu et al. 2018): as ``RigL`` but grows at random (stateless, seeded by
    (seed, layer, step)). Same arguments as ``RigL``."""

    updater = updaters.SETUpdater()


class SNFS(_DropGrowCallback):
    """SNFS (Dettmers & Zettlemoyer 2019, as in the RigL paper): as ``RigL`` but grows where
    the momentum of the dense gradient is largest, without redistribution across layers.

    The momentum is an exponential moving average ``m = momentum * m + (1 - momentum) * g``
    of the all-reduced dense gradient ``g``, kept by the callback (one float32 variable per
    masked weight) and updated at every step, so the dense gradient is computed every step.

    Args: as ``RigL``, plus ``momentum`` in [0, 1) (0.9).
    """

    updater = updaters.SNFSUpdater()

    def __init__(self, delta_t: int = 100, end_step: Optional[int] = None, alpha: float = 0.3,
                 decay="cosine", *, momentum: float = 0.9, **kwargs):
        super().__init__(delta_t, end_step, alpha, decay, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum


class StaticSparse(_DropGrowCallback):
    """Static sparse training: masks never change (the baseline). Takes the same arguments
    as ``RigL`` (validated, then unused) so that methods can be swapped in configs; it
    installs nothing, so training runs Keras' own train step."""

    updater = updaters.StaticUpdater()

    def _check_schedule(self, total_steps):
        if self.end_step is not None or total_steps is not None:
            super()._check_schedule(total_steps)


class GradualMagnitudePruning(MaskUpdateCallback):
    """Gradual magnitude pruning (Zhu & Gupta 2018) through the same masked layers.

    At the steps where ``schedule`` prunes, every masked weight keeps its largest-magnitude
    active entries so that its sparsity reaches the schedule's target; nothing regrows.
    Start from dense masks (``tfl.sparsify(model, 0.0)``) for the RigL paper's "Prune"
    baseline.

    Args:
      schedule: a ``tfmot.sparsity.keras.PruningSchedule`` (``PolynomialDecay(initial_
        sparsity, final_sparsity, begin_step, end_step, power=3, frequency=100)`` as in
        Zhu & Gupta, or ``ConstantSparsity``); it is called with the optimizer step count.
      dense_layers: layer names (or ``"layer/weight"`` keys) never pruned.
      seed, total_steps, log_dir, verbose: as in ``RigL``.
    """

    updater = updaters.MagnitudePruningUpdater()
    amount_name = "target_sparsity"

    def __init__(self, schedule, dense_layers: Sequence[str] = (), *, seed: int = 0,
                 total_steps: Optional[int] = None, log_dir: Optional[str] = None,
                 verbose: int = 0):
        super().__init__(seed=seed, total_steps=total_steps, log_dir=log_dir, verbose=verbose)
        if not isinstance(schedule, tfmot.sparsity.keras.PruningSchedule):
            raise TypeError("schedule must be a tfmot.sparsity.keras.PruningSchedule, e.g. "
                            "tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, 0, 1000), got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule
        self.dense_layers = tuple(dense_layers)

    def _check_schedule(self, total_steps):
        end = getattr(self.schedule, "end_step", None)
        if total_steps is not None and end is not None and end != -1 and end > total_steps:
            raise ValueError(
                f"GradualMagnitudePruning: the schedule's end_step={end} is beyond the end of "
                f"training ({total_steps} steps); the final sparsity would never be reached")

    def _takes_part(self, layer, weight_name):
        return not ({layer.layer.name, f"{layer.layer.name}/{weight_name}"}
                    & set(self.dense_layers))

    def _prepare(self, model, layers):
        names = {layer.layer.name for layer in layers}
        names |= {f"{layer.layer.name}/{n}" for layer in layers for n in layer.weight_names}
        unknown = sorted(set(self.dense_layers) - names)
        if unknown:
            raise ValueError(f"dense_layers {unknown} are not masked layers of the model; "
                             f"masked: {sorted(layer.layer.name for layer in layers)}")
        super()._prepare(model, layers)

    def _schedule(self, step):
        should_prune, sparsity = self.schedule(step)
        return tf.convert_to_tensor(should_prune), tf.cast(sparsity, tf.float32)

    def _next_update_after(self, step):
        begin = int(getattr(self.schedule, "begin_step", 0))
        freq = int(getattr(self.schedule, "frequency", 1))
        end = getattr(self.schedule, "end_step", -1)
        nxt = max(begin, begin + ((int(step) - begin) // freq + 1) * freq)
        if end is not None and end != -1 and nxt > end:
            return None
        return nxt


# gin: ``@RigL`` / ``tf_lottery.dst.RigL.delta_t = 100`` etc. in .gin files.
for _cls in (RigL, SET, SNFS, StaticSparse, GradualMagnitudePruning):
    gin.configurable(_cls, module="tf_lottery.dst")
# tfmot's schedules, for ``GradualMagnitudePruning.schedule = @PolynomialDecay()``.
for _cls in (tfmot.sparsity.keras.PolynomialDecay, tfmot.sparsity.keras.ConstantSparsity):
    gin.external_configurable(_cls, module="tfmot.sparsity.keras")
del _cls
