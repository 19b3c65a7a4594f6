"""Shared by the Keras 3 DST suites (suite_dst.py, suite_dst_rules.py): the sparse MLP they
train, its active counts and masked state, and a custom training loop per backend. Not named
suite_*.py or test_*.py: tests/test_keras3.py runs suite_*.py files and the main pytest
process must not collect it."""
import keras

import tf_lottery as tfl
from suite_core import BACKEND, _np, mlp

SIZES = {"d1/kernel": 512, "d2/kernel": 768, "d3/kernel": 96}  # mlp()'s kernels


def sparse_mlp(sparsity=0.75, seed=0):
    """suite_core.mlp(seed) masked uniformly at ``sparsity``."""
    return tfl.sparsify(mlp(seed), sparsity, "uniform", seed=seed)


def active_counts(model):
    """weight key -> number of active (mask 1) entries."""
    return {k: int(v.sum()) for k, v in tfl.get_masks(model).items()}


def masked_state(model, optimizer):
    """weight key -> (weight, [optimizer slots]) as numpy."""
    out = {}
    for layer in tfl.masked_layers(model):
        for name, (weight, _) in zip(layer.weight_names, layer.masked_weights):
            slots, _ = tfl.keras3.state.slots_of([tfl.keras3.state.unwrap(optimizer)], weight)
            out[f"{layer.layer.name}/{name}"] = (_np(weight), [_np(s) for s in slots])
    return out


class Loop:
    """A custom training loop over ``opt``: tf.GradientTape + ``opt.apply`` in a
    tf.function on TensorFlow, autograd + ``opt.apply`` on PyTorch, a jitted
    ``stateless_apply`` step on JAX (the state is written back to the variables and the
    masks synced after every ``run``)."""

    def __init__(self, model, opt, two_kinds=False):
        self.model, self.opt = model, opt
        self.two_kinds, self.count = two_kinds, 0
        loss = keras.losses.MeanSquaredError()
        if BACKEND == "tensorflow":
            import tensorflow as tf

            def step(x, y):
                with tf.GradientTape() as tape:
                    value = loss(y, model(x, training=True))
                tvars = model.trainable_variables
                opt.apply(tape.gradient(value, tvars), tvars)
            self.step = tf.function(step)
            # The ordinary and the update step traced apart (SparseOptimizer.traced_as)
            self.steps = {kind: tf.function(step) for kind in ("ordinary", "update")}
        elif BACKEND == "torch":
            def step(x, y):
                model.zero_grad()
                value = loss(y, model(x, training=True))
                value.backward()
                tvars = model.trainable_variables
                opt.apply([v.value.grad for v in tvars], tvars)
            self.step = step
        else:
            import jax

            def loss_fn(tv, ntv, x, y):
                pred, ntv = model.stateless_call(tv, ntv, x, training=True)
                return loss(y, pred), ntv

            def step(state, x, y):
                tv, ntv, ov = state
                (_, ntv), grads = jax.value_and_grad(loss_fn, has_aux=True)(tv, ntv, x, y)
                tv, ov = opt.stateless_apply(ov, grads, tv)
                return tv, ntv, ov
            self.step = jax.jit(step)
            # The ordinary and the update step compiled apart (SparseOptimizer.traced_as)
            self.steps = {kind: jax.jit(self._traced(step, kind))
                          for kind in ("ordinary", "update")}

    def _traced(self, step, kind):
        def traced(*args):
            with self.opt.traced_as(kind):
                return step(*args)
        return traced

    def run(self, x, y, batch=8):
        batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
        opt = self.opt
        if BACKEND in ("tensorflow", "torch"):
            for bx, by in batches:
                if not self.two_kinds:
                    self.step(bx, by)
                    continue
                self.count += 1
                kind = "update" if opt.update_due(self.count) else "ordinary"
                with opt.traced_as(kind):  # (tf.function traces at the first call)
                    self.steps[kind](bx, by)
            return
        model = self.model
        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables],
                 [v.value for v in opt.variables])
        for bx, by in batches:
            step = self.step
            if self.two_kinds:
                self.count += 1
                step = self.steps["update" if opt.update_due(self.count) else "ordinary"]
            state = step(state, bx, by)
        for group, values in zip((model.trainable_variables, model.non_trainable_variables,
                                  opt.variables), state):
            for variable, value in zip(group, values):
                variable.assign(value)
        opt.sync_masks()
