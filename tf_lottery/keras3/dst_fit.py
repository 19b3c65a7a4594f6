"""``model.fit`` with a mask-update method as a callback on a Keras 3 model
(``callbacks=[tfl.RigL(...)]``): the callback (``tf_lottery.dst.callback``) delegates here.

``fit_begin`` puts a ``SparseOptimizer`` around the compiled optimizer for the fit call and
compiles the ordinary and the update step apart (``_StepDispatch``; TensorFlow and JAX),
or reuses those of the method's previous ``fit`` of the same compiled model (``_Fit``);
``fit_epoch_end`` brings the model's masks up to date; ``fit_end`` gives the plain
optimizer back. The callback logs each update (``MaskUpdateCallback._collect``).
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
    fit = getattr(method, "_keras3_fit", None)
    if fit is None or not fit.serves(model):
        fit = _Fit(method, model)
        object.__setattr__(method, "_keras3_fit", fit)
    fit.install(model)


def step_count(model):
    """The optimizer steps taken by the model's fit so far, where the fit's step dispatcher
    counts them (TensorFlow and JAX, one step per call); else None."""
    function = model.train_function
    return function.step if isinstance(function, _StepDispatch) else None


def _steps_per_execution(model) -> int:
    return int(getattr(model, "steps_per_execution", 1) or 1)


class _Fit:
    """What a method installs on a model for its ``fit`` calls, kept from one call to the
    next: the wrapper and its compiled steps (compiling them again costs seconds per
    ``fit`` call on JAX). The next ``fit`` reuses the wrapper while the model keeps Keras'
    train function of this compile (``compile`` drops it), its optimizer and its trainable
    variables (``serves``); the wrapper takes the model's masks again and starts fresh
    update statistics, and the steps are traced again where the method's ``_trace_key``
    changed (another number of active entries; another schedule, as the default
    ``end_step`` follows each fit's length)."""

    def __init__(self, method, model):
        object.__setattr__(method, "_keras3_optimizer", None)
        self.plain = model.train_function  # Keras' own, made before on_train_begin
        self.variables = [id(v) for v in model.trainable_variables]
        self.wrapper = SparseOptimizer(model.optimizer, model, method)
        object.__setattr__(self.wrapper, "installed_by", method)
        self.train_function, self.key = None, None

    def serves(self, model) -> bool:
        wrapper = self.wrapper
        return (wrapper.model is model and wrapper.inner_optimizer is model.optimizer
                and self.plain is not None and model.train_function is self.plain
                and self.variables == [id(v) for v in model.trainable_variables])

    def install(self, model) -> None:
        wrapper = self.wrapper
        if self.train_function is not None:
            wrapper.begin()  # the masks may have changed since the last fit
            wrapper.reset_statistics()
        key = wrapper.method._trace_key(model, wrapper.inner_optimizer,
                                        [(u.k_max, u.k_change) for u in wrapper.units])
        model.optimizer = wrapper
        if self.train_function is not None and key == self.key:
            model.train_function = self.train_function
            if isinstance(model.train_function, _StepDispatch):
                model.train_function.recount()
            return
        self.key = key
        if keras.config.backend() in ("jax", "tensorflow") and _steps_per_execution(model) == 1:
            _StepDispatch(model, wrapper)
        else:
            _make_own_train_function(model)
        self.train_function = model.train_function


class _StepDispatch:
    """``model.train_function`` of a fit with a mask-update method: the ordinary compiled
    step at ordinary steps, the update one at the method's update steps
    (``SparseOptimizer.traced_as``; an in-step conditional costs about 3% of a
    LeNet-300-100 step on TensorFlow and 20% on JAX). Keras' own ``make_train_function``
    compiles each (its jit options, donation, distribution and strategy). The step count
    is read from the optimizer's ``iterations`` at the first step and then counted (one
    step per call: installed only with ``steps_per_execution=1``); it is read again
    whenever the JAX trainer passes a state this object did not return (a callback's
    sync, e.g. ``BackupAndRestore`` restoring the count), and on TensorFlow after every
    epoch (``recount``)."""

    def __init__(self, model, wrapper):
        self.wrapper, self.functions = wrapper, {}
        self.jax = keras.config.backend() == "jax"
        for kind in ("ordinary", "update"):
            self.functions[kind] = _make_own_train_function(model)
        if self.jax:
            self.at = next(i for i, v in enumerate(wrapper.variables) if v is wrapper.iterations)
        self.step, self.returned = None, None
        model.train_function = self

    def recount(self) -> None:
        """Reads the step count from the optimizer again at the next step (and lets go of
        the last state returned)."""
        self.step, self.returned = None, None

    def __call__(self, *args):
        if self.jax:
            state, iterator = args
            if state is not self.returned:  # the trainer read the variables: count from there
                self.step = int(ops.convert_to_numpy(state[2][self.at]))
        elif self.step is None:
            self.step = int(ops.convert_to_numpy(self.wrapper.iterations.value))
        self.step += 1
        kind = "update" if self.wrapper.update_due(self.step) else "ordinary"
        with self.wrapper.traced_as(kind):  # (around the call, which traces at first)
            if not self.jax:
                return self.functions[kind](*args)
            logs, self.returned = self.functions[kind](state, iterator)
        return logs, self.returned


def _make_own_train_function(model):
    """``model.make_train_function(force=True)`` over the model's train_step as a function
    object of its own: jax.jit shares traces between jits of one function, so a step
    traced again (other kind, bounds or schedule) needs a new one. Keras has no public way
    to give make_train_function a step, so the model's train_step is shadowed while it
    runs."""
    cls = type(model)
    if keras.config.backend() == "jax":
        model.train_step = lambda state, data: cls.train_step(model, state, data)
    else:
        model.train_step = lambda data: cls.train_step(model, data)
    try:
        model.make_train_function(force=True)
    finally:
        del model.train_step
    return model.train_function


def _uninstall(model, wrapper) -> None:
    """Gives the model its plain optimizer back, and Keras' train function of its compile
    while ours is still the model's (after a fit that raised, compile may have replaced
    both)."""
    wrapper.release()
    if model.optimizer is wrapper:
        model.optimizer = wrapper.inner_optimizer
    fit = getattr(wrapper.installed_by, "_keras3_fit", None)
    if fit is not None and fit.wrapper is wrapper:
        if isinstance(fit.train_function, _StepDispatch):
            fit.train_function.recount()
        if model.train_function is fit.train_function:
            model.train_function = fit.plain


def fit_epoch_end(method, model) -> None:
    """``on_epoch_end``: the model's masks catch up (JAX) and the last update is logged."""
    wrapper = model.optimizer
    if isinstance(wrapper, SparseOptimizer) and wrapper.installed_by is method:
        wrapper.sync_masks()
        method._collect()
        if isinstance(model.train_function, _StepDispatch):
            model.train_function.recount()


def fit_end(method, model) -> None:
    """``on_train_end``: removes the wrapper; the model keeps the masks it reached."""
    wrapper = model.optimizer
    if isinstance(wrapper, SparseOptimizer) and wrapper.installed_by is method:
        method._collect()
        _uninstall(model, wrapper)
