"""Masks are law: after any sequence of events every masked entry is exactly 0.

The events are the ones a user meets: fit, a mask change (``set_masks``, an IMP prune,
a RigL / SET / gradual-magnitude-pruning update), ``rewind`` (with or without the live
optimizer), ``load_weights`` / ``tf.train.Checkpoint`` restores of sparse and dense
checkpoints, and writes from outside (``kernel.assign``). After each one: the raw masked
entries are 0 (outside writes are masked as they land), EMA copies of masked entries are
0, and the wrapped model predicts exactly what the stripped model predicts. hypothesis draws the sequences; ``TFL_HYPOTHESIS_EXAMPLES``
bounds the examples per optimizer (CI keeps it small).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import tf_lottery as tfl
from tf_lottery._keras import keras, tf
from tf_lottery.lottery.rewind import snapshot
from tf_lottery.masking import selection

EXAMPLES = int(os.environ.get("TFL_HYPOTHESIS_EXAMPLES", "4"))

OPTIMIZERS = {
    "sgd_momentum": lambda ema: keras.optimizers.SGD(0.05, momentum=0.9, use_ema=ema),
    "sgd_nesterov": lambda ema: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True,
                                                     use_ema=ema),
    "adam": lambda ema: keras.optimizers.Adam(0.01, use_ema=ema),
    "adamw": lambda ema: keras.optimizers.AdamW(0.01, weight_decay=0.01, use_ema=ema),
    "adagrad": lambda ema: keras.optimizers.Adagrad(0.05, use_ema=ema),
    "rmsprop": lambda ema: keras.optimizers.RMSprop(0.01, momentum=0.5, use_ema=ema),
    "ftrl": lambda ema: keras.optimizers.Ftrl(0.05, use_ema=ema),
    "lion": lambda ema: keras.optimizers.Lion(0.001, use_ema=ema),
}

EVENTS = ["fit", "set_masks", "imp_prune", "rigl", "set", "gmp", "loop_rigl", "snapshot", "rewind",
          "rewind_live", "assign_dense", "restore_dense", "save", "restore", "save_h5",
          "load_h5"]


def _model(regularise: bool, seed: int):
    """Conv2D -> BatchNorm -> Flatten -> Dense(8) -> Dense(4), optional L2 and constraint."""
    keras.utils.set_random_seed(seed)
    reg = keras.regularizers.L2(1e-3) if regularise else None
    con = keras.constraints.MaxNorm(3.0) if regularise else None
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(3, 3, kernel_regularizer=reg, kernel_constraint=con, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", kernel_regularizer=reg, name="d1")(x)
    outputs = keras.layers.Dense(4, kernel_constraint=con, name="d2")(x)
    return keras.Model(inputs, outputs)


class _World:
    """One model, its optimizer and the files/snapshots events leave behind."""

    def __init__(self, optimizer_name, use_ema, regularise, mixed, tmp_path, seed,
                 jit_compile=False):
        self.tmp = tmp_path
        self.rng = np.random.default_rng(seed)
        self.mixed = mixed
        self.model = tfl.sparsify(_model(regularise, seed), 0.5, seed=seed)
        optimizer = OPTIMIZERS[optimizer_name](use_ema)
        if mixed:
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        self.model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           jit_compile=jit_compile)
        self.x = self.rng.normal(size=(16, 6, 6, 1)).astype("float32")
        self.y = self.rng.integers(0, 4, size=(16,)).astype("int32")
        self.snap = snapshot(self.model)
        self.saved = self.saved_h5 = None

    def pairs(self):
        return [(w, m) for layer in tfl.masked_layers(self.model) for w, m in layer.masked_weights]

    def random_masks(self):
        return {k: (self.rng.random(m.shape) < self.rng.uniform(0.2, 0.9)).astype("float32")
                for k, m in tfl.get_masks(self.model).items()}

    def fit(self, callbacks=(), steps=2):
        self.model.fit(self.x, self.y, batch_size=8, epochs=1, steps_per_epoch=steps,
                       callbacks=list(callbacks), verbose=0, shuffle=False)

    def run(self, event):
        model = self.model
        if event == "fit":
            self.fit()
        elif event == "set_masks":
            tfl.set_masks(model, self.random_masks())
        elif event == "imp_prune":
            masks = tfl.get_masks(model)
            weights = {k: v for k, v in tfl.get_weights(model).items() if k in masks}
            tfl.set_masks(model, selection.prune_surviving(weights, masks, 0.2))
        elif event in ("rigl", "set", "gmp"):
            if self.mixed:  # the update callbacks refuse loss scaling (documented)
                return
            if event == "gmp":
                step = int(model.optimizer.iterations.numpy())
                schedule = tfl._keras.tfmot.sparsity.keras.PolynomialDecay(
                    0.5, 0.8, begin_step=step, end_step=step + 2, frequency=1)
                callback = tfl.GradualMagnitudePruning(schedule, total_steps=step + 2)
            else:
                cls = tfl.RigL if event == "rigl" else tfl.SET
                callback = cls(delta_t=1, alpha=0.3, total_steps=2)
            self.fit([callback])
        elif event == "loop_rigl":  # a custom training loop through tfl.SparseOptimizer
            if self.mixed:
                return
            optimizer = tfl.SparseOptimizer(model.optimizer, model,
                                            tfl.RigL(delta_t=1, alpha=0.3, end_step=10 ** 6))
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            for start in (0, 8):
                with tf.GradientTape() as tape:
                    loss = loss_fn(self.y[start:start + 8],
                                   model(self.x[start:start + 8], training=True))
                variables = model.trainable_variables
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            optimizer.method.engine.release()
        elif event == "snapshot":
            self.snap = snapshot(model)
        elif event in ("rewind", "rewind_live"):
            optimizer = model.optimizer if event == "rewind_live" else None
            tfl.rewind(model, self.snap, optimizer=optimizer)
        elif event == "assign_dense":
            for weight, _ in self.pairs():
                weight.assign(self.rng.normal(size=weight.shape).astype("float32"))
        elif event == "restore_dense":
            dense = [tf.Variable(self.rng.normal(size=w.shape).astype("float32"))
                     for w, _ in self.pairs()]
            path = tf.train.Checkpoint(kernels=dense).write(str(self.tmp / "dense"))
            tf.train.Checkpoint(kernels=[w for w, _ in self.pairs()]).read(path).assert_consumed()
        elif event == "save":
            ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
            self.saved = ckpt.write(str(self.tmp / "sparse"))
        elif event == "restore" and self.saved:
            tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(self.saved)
        elif event == "save_h5":
            self.saved_h5 = str(self.tmp / "weights.h5")
            model.save_weights(self.saved_h5)
        elif event == "load_h5" and self.saved_h5:
            model.load_weights(self.saved_h5)

    def check(self, after):
        model = self.model
        masks = [m.numpy() for _, m in self.pairs()]
        for (weight, _), mask in zip(self.pairs(), masks):
            leaked = np.count_nonzero(weight.numpy()[mask == 0])
            assert leaked == 0, f"after {after}: {leaked} masked entries of {weight.name}"
        _check_ema(model, self.pairs(), masks, after)
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        stripped = tfl.strip(copy)
        np.testing.assert_allclose(model(self.x, training=False).numpy().astype("float32"),
                                   stripped(self.x, training=False).numpy().astype("float32"),
                                   rtol=0, atol=1e-6, err_msg=f"after {after}")


def _check_ema(model, pairs, masks, after):
    optimizer = model.optimizer
    while hasattr(optimizer, "inner_optimizer"):
        optimizer = optimizer.inner_optimizer
    if not getattr(optimizer, "use_ema", False) or not getattr(optimizer, "_built", False):
        return
    for (weight, _), mask in zip(pairs, masks):
        slots, _ = tfl.dst.optimizer_slots(optimizer, [weight])[id(weight)]
        copies = {id(v) for v in optimizer._model_variables_moving_average}
        for slot in slots:
            if id(slot) in copies:
                leaked = np.count_nonzero(slot.numpy()[mask == 0])
                assert leaked == 0, f"after {after}: {leaked} masked EMA entries of {weight.name}"


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_masks_are_law_over_random_event_sequences(optimizer_name, tmp_path_factory):
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    @example(events=EVENTS, use_ema=True, regularise=True, seed=1)  # every event, every run
    @given(events=st.lists(st.sampled_from(EVENTS), min_size=3, max_size=7),
           use_ema=st.booleans(), regularise=st.booleans(), seed=st.integers(0, 1000))
    def run(events, use_ema, regularise, seed):
        world = _World(optimizer_name, use_ema, regularise, False,
                       tmp_path_factory.mktemp("events"), seed)
        world.fit()
        world.check("first fit")
        for event in events + ["fit"]:
            world.run(event)
            world.check(event)
    run()


def test_masks_are_law_under_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        world = _World("adam", True, True, True, tmp_path, 3)
        for event in ["fit", "set_masks", "fit", "assign_dense", "fit", "rewind_live", "fit",
                      "imp_prune", "save", "set_masks", "restore", "fit"]:
            world.run(event)
            world.check(event)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_masks_are_law_under_xla(tmp_path):
    """The same guarantees when the training step is compiled with XLA (jit_compile=True),
    where the mask multiply fuses into the step."""
    world = _World("adam", True, True, False, tmp_path, 4, jit_compile=True)
    for event in ["fit", "set_masks", "fit", "assign_dense", "fit", "rigl", "rewind_live",
                  "fit", "imp_prune", "gmp", "save", "set_masks", "restore", "fit"]:
        world.run(event)
        world.check(event)


def _mlp():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((20,))
    x = keras.layers.Dense(64, activation="relu", name="h1")(inputs)
    x = keras.layers.Dense(64, activation="relu", name="h2")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="out")(x))


@pytest.mark.parametrize("make_optimizer", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adam(0.01),
    lambda: keras.optimizers.AdamW(0.01, use_ema=True),
], ids=["sgd_momentum", "adam", "adamw_ema"])
def test_set_masks_after_fit_leaks_nothing(make_optimizer):
    """The reported case: masks changed while the optimizer holds state, then more fit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 20)).astype("float32")
    y = rng.integers(0, 10, size=(256,))
    model = tfl.sparsify(_mlp(), 0.0, seed=0)
    model.compile(make_optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    masks = {k: (rng.random(m.shape) < 0.5).astype("float32")
             for k, m in tfl.get_masks(model).items()}
    tfl.set_masks(model, masks)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    leaked = sum(int(np.count_nonzero(w.numpy()[m.numpy() == 0]))
                 for layer in tfl.masked_layers(model) for w, m in layer.masked_weights)
    assert leaked == 0
    for key, weight in tfl.get_weights(model).items():
        assert np.count_nonzero(weight[masks[key] == 0]) == 0, key
    predictions = model.predict(x, verbose=0)
    np.testing.assert_array_equal(predictions, tfl.strip(model).predict(x, verbose=0))
