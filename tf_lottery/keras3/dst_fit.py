"""``model.fit`` with a mask-update method as a callback on a Keras 3 model
(``callbacks=[tfl.RigL(...)]``): the callback (``tf_lottery.dst.callback``) delegates here.

``fit_begin`` puts a ``SparseOptimizer`` around the compiled optimizer for the fit call (on
JAX it also compiles the ordinary and the update step apart, ``_StepDispatch``);
``fit_epoch_end`` brings the model's masks up to date and logs the last update;
``fit_end`` gives the plain optimizer back.
"""
import keras
from keras import ops

from tf_lottery.keras3.dst import SparseOptimizer

__all__ = ["fit_begin", "fit_end", "fit_epoch_end"]


def fit_begin(method, model, total_steps) -> None:
    """``on_train_begin`` on a Keras 3 model: wraps the compiled optimizer for this fit."""
    current = model.optimizer
    if isinstance(current, SparseOptimizer):
        if current.installed_by is None:
            raise ValueError(f"{type(method).__name__}: the model's optimizer is a "
                             "tfl.SparseOptimizer, which already updates the masks; drop the "
                             "callback (or compile with the plain optimizer)")
        _uninstall(model, current)  # left by a fit that raised before on_train_end
    method._check_schedule(total_steps)
    method._check_model(model)
    if not method.updater.updates:
        return  # static sparse: the masked layers keep the masks, nothing to install
    object.__setattr__(method, "_keras3_optimizer", None)
    wrapper = SparseOptimizer(model.optimizer, model, method)
    object.__setattr__(wrapper, "installed_by", method)
    model.optimizer = wrapper
    model.make_train_function(force=True)
    if keras.config.backend() == "jax" and _steps_per_execution(model) == 1:
        _StepDispatch(model, wrapper)


def _steps_per_execution(model) -> int:
    return int(getattr(model, "steps_per_execution", 1) or 1)


class _StepDispatch:
    """``model.train_function`` of a JAX fit with a mask-update method: the ordinary
    compiled step at ordinary steps, the update one at the method's update steps
    (``SparseOptimizer.traced_as``). Keras' own ``make_train_function`` compiles each (its
    jit options, donation and distribution shardings). The step count is read from the
    state's ``iterations`` whenever the trainer passes a state this object did not return
    (the first step, or a callback's sync; e.g. ``BackupAndRestore`` restoring the count),
    plus one per call (one step per call: installed only with ``steps_per_execution=1``)."""

    def __init__(self, model, wrapper):
        self.wrapper, self.functions = wrapper, {}
        for kind in ("ordinary", "update"):
            # Each kind needs its own function object: jax.jit shares traces between
            # jits of one function. Keras has no public way to give make_train_function
            # a step, so the model's train_step is shadowed while it runs.
            model.train_step = _traced_step(model, wrapper, kind)
            try:
                model.make_train_function(force=True)
            finally:
                del model.train_step
            self.functions[kind] = model.train_function
        self.at = next(i for i, v in enumerate(wrapper.variables) if v is wrapper.iterations)
        self.step, self.returned = 0, None
        model.train_function = self

    def __call__(self, state, iterator):
        if state is not self.returned:  # the trainer read the variables: count from there
            self.step = int(ops.convert_to_numpy(state[2][self.at]))
        self.step += 1
        kind = "update" if self.wrapper.update_due(self.step) else "ordinary"
        logs, self.returned = self.functions[kind](state, iterator)
        return logs, self.returned


def _traced_step(model, wrapper, kind):
    def train_step(state, data):
        with wrapper.traced_as(kind):
            return type(model).train_step(model, state, data)
    return train_step


def _uninstall(model, wrapper) -> None:
    wrapper.release()
    model.optimizer = wrapper.inner_optimizer
    model.train_function = None


def _record(method, wrapper) -> None:
    record = wrapper.last_update()
    if record is not None and (not method.history or method.history[-1] != record):
        method.history.append(record)
        if method.verbose:
            print(f"{type(method).__name__} step {record['step']}: {method.amount_name} "
                  f"{record[method.amount_name]:.4f}, {sum(record['grown'].values())} grown, "
                  f"{sum(record['dropped'].values())} dropped")


def fit_epoch_end(method, model) -> None:
    """``on_epoch_end``: the model's masks catch up (JAX) and the last update is logged."""
    wrapper = model.optimizer
    if isinstance(wrapper, SparseOptimizer) and wrapper.installed_by is method:
        wrapper.sync_masks()
        _record(method, wrapper)


def fit_end(method, model) -> None:
    """``on_train_end``: removes the wrapper; the model keeps the masks it reached."""
    wrapper = model.optimizer
    if isinstance(wrapper, SparseOptimizer) and wrapper.installed_by is method:
        _record(method, wrapper)
        _uninstall(model, wrapper)
