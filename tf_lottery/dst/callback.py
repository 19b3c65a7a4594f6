"""``MaskUpdateCallback``: the ``model.fit`` plumbing of the dynamic sparse training methods
(``RigL``, ``SET``, ``SNFS``, ``StaticSparse``, ``GradualMagnitudePruning`` in
``tf_lottery.dst.methods``), with their logging.

Usage::

    model = tfl.sparsify(model, 0.9, distribution="erk", seed=0)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss, metrics)
    model.fit(data, epochs=..., callbacks=[tfl.RigL(delta_t=100, alpha=0.3)])

A Keras callback never sees the gradients, so in ``on_train_begin`` the callback installs
a ``train_step`` on the model (an instance attribute, removed in ``on_train_end``, and at
the latest when the next ``fit`` begins if a fit raised before ``on_train_end``) and
rebuilds the model's train function once, or reuses the one it traced for its previous
``fit`` of the same compiled model. The installed step is Keras' default step
(forward, ``compute_loss``, gradients, ``compute_metrics``) with the optimizer call
replaced by ``MaskUpdateEngine.apply_gradients`` (``tf_lottery.dst.engine``: the masked
update, then the in-graph mask update; the module doc there says how). The same engine
serves any other training loop through ``tfl.SparseOptimizer``; a model that defines
its own ``train_step`` must use that instead of the callback.

Steps: ``step`` is the number of optimizer steps taken once the current one is applied
(``optimizer.iterations + 1``). Updates happen at ``step = delta_t, 2 delta_t, ...`` while
``step <= end_step``, dropping ``f(step)`` of the active weights of every masked weight.

Limitations: ``LossScaleOptimizer`` (mixed precision) and optimizers whose per-weight
state is not shaped like the weight (Adafactor) are refused with an error; SNFS's
momentum and the update statistics live in the engine, not in model checkpoints; with
``steps_per_execution > 1`` only the last update of each execution is logged.
TPUStrategy has not been run (no TPU here); nothing in the path is known to stop it.
"""
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.dst import updaters
from tf_lottery.dst.engine import MaskUpdateEngine
from tf_lottery.masking.agreement import is_multi_worker
from tf_lottery.dispatch import get_masks, is_keras3, live
from tf_lottery.masking.api import check_masks_agree, masked_layers

__all__ = ["MaskUpdateCallback"]

_INSTALLED = "_tf_lottery_mask_update_callback"


def _check_int(value, what, minimum=1, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{what} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return int(value)


class MaskUpdateCallback(keras.callbacks.Callback):
    """Base class of the methods: a Keras callback, and the rule and schedule that
    ``tfl.SparseOptimizer`` runs in any training loop.

    Subclasses give an ``updaters.Updater`` and implement ``_schedule(step)`` returning
    ``(is_update, amount)`` tensors (amount: drop fraction, or target sparsity for
    pruning) and ``_check_schedule(total_steps)``.

    Attributes (after training):
      history: one dict per logged update: ``step``, ``drop_fraction`` (pruning:
        ``target_sparsity``), and ``grown``, ``dropped``, ``active``: weight key -> count.
      update_traces: how often the update was traced (one per replica per trace of the
        train function; a later ``fit`` of the same compiled model reuses the trace).
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
        self.engine = MaskUpdateEngine(self)
        self._writer = None
        self._keras3 = False
        self._recount = False
        self._traced = None  # (Keras' train function, identity, the installed one)
        self._installed = False
        self._last_logged = 0
        self._py_step = 0
        self._epoch_start = 0

    @property
    def update_traces(self) -> int:
        keras3_optimizer = getattr(self, "_keras3_optimizer", None)
        if keras3_optimizer is not None:
            return keras3_optimizer.update_traces
        return self.engine.update_traces

    @property
    def dense_gradient_steps(self) -> int:
        """Steps (of all fit calls) whose train step computed the dense gradient."""
        return self.engine.dense_gradient_steps

    # -- hooks for subclasses (also used by the engine)
    def _schedule_key(self) -> tuple:
        """What ``_schedule`` puts into a traced step as constants."""
        return ()

    def _trace_key(self, model, optimizer, bounds) -> tuple:
        """What a train step traced for this method holds besides Keras' own train function
        of the model's compile: the model, the optimizer it applies, the trainable
        variables, the top_k bounds (``(k_max, k_change)`` per updated weight) and the
        schedule's constants. A later ``fit`` reuses the step only under the same key."""
        return (id(model), id(optimizer), tuple(id(v) for v in model.trainable_variables),
                tuple(bounds), self._schedule_key())

    def _schedule(self, step):
        raise NotImplementedError

    def _check_schedule(self, total_steps: Optional[int]) -> None:
        pass

    def _next_update_after(self, step: int) -> Optional[int]:
        """Host-side: the first update step > ``step`` (for logging only), or None."""
        return None

    def _takes_part(self, layer, weight_name) -> bool:
        return True

    def _change_bound(self, k_max: int) -> Optional[int]:
        """A bound on the entries one update drops or grows in a weight with ``k_max``
        active entries (``updaters.UnitState.k_change``), or None if there is none."""
        return None

    def _top_k_bounds(self, mask) -> Tuple[int, Optional[int]]:
        """``(k_max, k_change)`` of ``updaters.UnitState`` for a weight whose mask (an
        array) is ``mask``, when a training step is about to be traced."""
        k_max = int(np.count_nonzero(np.asarray(mask) > 0.5))
        return k_max, self._change_bound(k_max)

    def _check_model(self, model) -> None:
        """Raises ValueError before training if the method cannot run on ``model``."""

    # -- Keras hooks
    def _total_steps(self):
        total, params = self.total_steps, getattr(self, "params", None)  # (set by fit)
        if total is None and params:
            steps, epochs = params.get("steps"), params.get("epochs")
            if steps is not None and epochs is not None:
                total = int(steps) * int(epochs)
        return total

    def on_train_begin(self, logs=None):
        model = self.model
        self._keras3 = is_keras3(model)
        if self._keras3:  # Keras 3: the optimizer wrapper of tf_lottery.keras3.dst
            from tf_lottery.keras3 import dst_fit as keras3_dst
            keras3_dst.fit_begin(self, model, self._total_steps())
        else:
            self._tf_keras_begin(model)
        self._py_step = int(model.optimizer.iterations.numpy())
        self._epoch_start = self._py_step
        self._last_logged = self._py_step
        if self.log_dir:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "dst"))
            self._log_sparsity(self._py_step)

    def _tf_keras_begin(self, model):
        if not masked_layers(model):
            raise ValueError(f"{type(self).__name__}: model {model.name!r} has no MaskedLayer; "
                             "sparsify it first (tfl.sparsify)")
        from tf_lottery.dst.optimizer import SparseOptimizer
        if isinstance(model.optimizer, SparseOptimizer):
            raise ValueError(f"{type(self).__name__}: the model's optimizer is a "
                             "tfl.SparseOptimizer, which already updates the masks; drop the "
                             "callback (or compile with the plain optimizer)")
        self._check_schedule(self._total_steps())
        self._check_model(model)
        if self.updater.updates:
            self._prepare(model)
            self._install(model)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._py_step
        self._recount = True

    def on_epoch_end(self, epoch, logs=None):
        if self._keras3:
            from tf_lottery.keras3 import dst_fit as keras3_dst
            keras3_dst.fit_epoch_end(self, self.model)

    def on_train_batch_end(self, batch, logs=None):
        self._py_step = self._step_after(int(batch))
        if not self.updater.updates:
            return
        nxt = self._next_update_after(self._last_logged)
        if nxt is not None and self._py_step >= nxt:
            self._collect()

    def _step_after(self, batch: int) -> int:
        """Optimizer steps taken once batch ``batch`` of this epoch is done: counted by a
        Keras 3 fit's step dispatcher where there is one; else read from the optimizer at
        the first batch of each epoch (after any callback that moves the count when
        training or the epoch begins, as ``BackupAndRestore`` does) and counted on."""
        if self._keras3:
            from tf_lottery.keras3 import dst_fit as keras3_dst
            step = keras3_dst.step_count(self.model)
            if step is not None:
                return step
        if self._recount:
            iterations = live(self.model).optimizer.iterations
            self._epoch_start = int(iterations.numpy()) - batch - 1
            self._recount = False
        return self._epoch_start + batch + 1

    def on_train_end(self, logs=None):
        if self._keras3:
            from tf_lottery.keras3 import dst_fit as keras3_dst
            keras3_dst.fit_end(self, self.model)
        elif self._installed:
            self._collect()
            self._uninstall(self.model)
        if self.log_dir:
            from tf_lottery.plots import plot_layer_sparsity
            from tf_lottery.dispatch import sparsity_report
            plot_layer_sparsity(sparsity_report(self.model),
                                os.path.join(self.log_dir, "layer_sparsity.png"),
                                title=f"{type(self).__name__}: per-layer sparsity")
            if self._writer is not None:
                self._writer.flush()

    # -- setup
    def _prepare(self, model):
        if type(model).train_step is not keras.Model.train_step:
            raise ValueError(
                f"model {model.name!r} overrides train_step; {type(self).__name__} as a "
                "callback installs its own train step. Use the optimizer wrapper instead: "
                f"model.compile(tfl.SparseOptimizer(optimizer, model, tfl.{type(self).__name__}"
                "(...)), loss) and no callback")
        other = model.__dict__.get(_INSTALLED)
        # Callbacks of one fit call share one params dict; an entry from another fit call
        # is stale (that fit raised before on_train_end) and is replaced.
        if other is not None and other[0] is not self and other[1] is self.params:
            raise ValueError("another mask-update callback is already active on this model; "
                             "use one of RigL, SET, SNFS, GradualMagnitudePruning at a time")
        self.engine.prepare(model, model.optimizer)
        self._tvar_count = len(model.trainable_variables)

    def _install(self, model):
        """Puts this callback's train step on ``model`` for the current fit call.

        ``fit`` builds its train function (``make_train_function``) *before* calling
        ``on_train_begin``, so the train function is rebuilt here, or the one traced for
        this callback's previous fit is reused (same compile and ``_trace_key``; tracing
        again costs about a second per fit call even for LeNet-300-100). The instance's
        ``make_train_function`` is replaced too, by one that first removes the installed
        step: the next ``fit`` (or ``train_on_batch``) starts from Keras' own step even if
        this fit raised before ``on_train_end``.
        """
        def make_default_train_function(force=False):
            self._uninstall(model)
            return model.make_train_function(force=force)

        plain = model.train_function  # Keras' own of this compile, made before this call
        object.__setattr__(model, "train_step", self._train_step)
        object.__setattr__(model, "make_train_function", make_default_train_function)
        object.__setattr__(model, _INSTALLED, (self, self.params))
        identity = self._trace_key(model, model.optimizer,
                                   [(u.k_max, u.k_change) for u in self.engine.units])
        if self._traced is not None and self._traced[:2] == (plain, identity):
            model.train_function = self._traced[2]  # the last fit's, still valid
        else:
            model.train_function = type(model).make_train_function(model, force=True)
            self._traced = (plain, identity, model.train_function)
        self._installed = True

    def _uninstall(self, model):
        if model.__dict__.get(_INSTALLED, (None,))[0] is self:
            for name in ("train_step", "make_train_function", _INSTALLED):
                model.__dict__.pop(name, None)
            # Keras' own train function of this compile, while ours is still the model's
            # (after a fit that raised, compile may have dropped both): the next fit of
            # this callback reuses the traced one while Keras' is the model's.
            if self._traced is not None and model.train_function is self._traced[2]:
                model.train_function = self._traced[0]
            self.engine.release()
        self._installed = False

    # -- the train step (replica context)
    @tf.autograph.experimental.do_not_convert
    def _train_step(self, data):
        model = self.model
        tvars = model.trainable_variables
        if len(tvars) != self._tvar_count:
            raise ValueError("the model's trainable variables changed after training began")
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x, y, y_pred, sample_weight)
        if hasattr(model, "_validate_target_and_loss"):
            model._validate_target_and_loss(y, loss)
        grads = tape.gradient(loss, tvars)
        self.engine.apply_gradients(model.optimizer, list(zip(grads, tvars)))
        return model.compute_metrics(x, y, y_pred, sample_weight)

    # -- observability (host side, outside the update path)
    def _collect(self):
        """Logs the last mask update if it is new: ``history``, ``verbose``, ``log_dir``."""
        if self._keras3:
            optimizer = getattr(self, "_keras3_optimizer", None)
            if optimizer is None:
                return
            live(self.model)  # JAX: the fit loop's state, this step's
            record = optimizer.last_update()
        else:
            record = self.engine.last_update()
        if record is None or record["step"] <= self._last_logged:  # no update since
            self._last_logged = max(self._last_logged, self._py_step)
            return
        self._last_logged = step = record["step"]
        if not self._keras3 and is_multi_worker(self.model.distribute_strategy):
            record["masks_digest"] = check_masks_agree(self.model)  # raises if workers differ
        self.history.append(record)
        grown = sum(record["grown"].values())
        dropped = sum(record["dropped"].values())
        if self.verbose:
            print(f"{type(self).__name__} step {step}: {self.amount_name} "
                  f"{record[self.amount_name]:.4f}, {grown} grown, {dropped} dropped")
        if self._writer is not None:
            with self._writer.as_default():
                tf.summary.scalar(f"dst/{self.amount_name}", record[self.amount_name], step=step)
                tf.summary.scalar("dst/connections_changed", grown + dropped, step=step)
                for key in record["grown"]:
                    tf.summary.scalar(f"dst/connections_changed/{key}",
                                      record["grown"][key] + record["dropped"][key], step=step)
            self._log_sparsity(step)

    def _log_sparsity(self, step):
        if self._writer is None:
            return
        total_active = total_size = 0
        with self._writer.as_default():
            for key, mask in get_masks(self.model).items():
                active = int(np.count_nonzero(mask))
                total_active += active
                total_size += mask.size
                tf.summary.scalar(f"dst/sparsity/{key}", 1.0 - active / mask.size, step=step)
            if total_size:
                tf.summary.scalar("dst/sparsity/total", 1.0 - total_active / total_size,
                                  step=step)
