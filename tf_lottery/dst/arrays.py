"""The array operations the drop/grow rules and schedules of dynamic sparse training are
written in, for each array library that runs them.

``updaters`` and ``schedules`` are written once against this small namespace; ``TF``
runs them on TensorFlow tensors (the tf_keras path, and Keras 3 on the TensorFlow
backend: the same ops, so the same choices, ties included), ``get("jax")`` on JAX arrays
(Keras 3 on the JAX backend, inside a jitted step) and ``get("torch")`` on PyTorch
tensors (Keras 3 on PyTorch, eager). No op makes a host round trip. Sorting is stable,
so ties go to the lower index on all.

A selection's threshold (``kth_largest``) is found the way the step runs cheapest, with
the same value: on JAX, and on TensorFlow where XLA compiles the step (``jit_compile``,
TPUs), whose CPU ``top_k`` of a long vector costs a full sort, by counting passes; in
TensorFlow's graph executor or eagerly, by an unsorted ``top_k`` of exactly k entries (a
dynamic shape, which XLA could not take); on PyTorch, by ``top_k``.

``namespace(x)`` picks the namespace of a tensor (``None`` for Python numbers and numpy).
"""
import sys

import numpy as np


class _TF:
    """TensorFlow ops (eager or inside ``tf.function``)."""

    name = "tensorflow"

    def __init__(self):
        import tensorflow as tf
        self.tf = tf
        self.float32, self.int32, self.int64, self.bool = tf.float32, tf.int32, tf.int64, tf.bool
        self.uint32 = tf.uint32
        self.lowest = tf.float32.min

    def is_tensor(self, x) -> bool:
        return self.tf.is_tensor(x) or isinstance(x, self.tf.Variable)

    def asarray(self, x, dtype=None):
        return self.tf.convert_to_tensor(x, dtype=dtype)

    def cast(self, x, dtype):
        return self.tf.cast(x, dtype)

    def shape(self, x):
        return self.tf.shape(x)

    def size(self, x):
        return self.tf.size(x)

    def static_size(self, x):
        """The number of entries as a Python int, or None if unknown when tracing."""
        return x.shape.num_elements()

    def reshape(self, x, shape):
        return self.tf.reshape(x, shape)

    def transpose(self, x):
        return self.tf.transpose(x)

    def where(self, cond, a, b):
        return self.tf.where(cond, a, b)

    def isnan(self, x):
        return self.tf.math.is_nan(x)

    def abs(self, x):
        return self.tf.abs(x)

    def floor(self, x):
        return self.tf.floor(x)

    def cos(self, x):
        return self.tf.cos(x)

    def clip(self, x, lo, hi):
        return self.tf.clip_by_value(x, lo, hi)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)

    def power(self, a, b):
        return self.tf.pow(a, b)

    def sum(self, x, axis=None):
        return self.tf.reduce_sum(x, axis=axis)

    def equal(self, a, b):
        return self.tf.equal(a, b)

    def mod(self, a, b):
        return self.tf.math.floormod(a, b)

    def logical_and(self, a, b):
        return self.tf.logical_and(a, b)

    def arange(self, n):
        return self.tf.range(n)

    def full(self, shape, value):
        return self.tf.fill(shape, self.tf.constant(value, self.tf.float32))

    def argsort_desc(self, x, axis=-1):
        return self.tf.argsort(x, axis=axis, direction="DESCENDING", stable=True)

    def argsort(self, x, axis=-1):
        return self.tf.argsort(x, axis=axis, stable=True)

    def take(self, x, indices, axis=0):
        return self.tf.gather(x, indices, axis=axis)

    def top_k(self, x, k: int):
        """``(values, indices)`` of the ``k`` largest entries of 1-D ``x``, largest first,
        ties to the lower index (as ``argsort_desc``), ``k`` a Python int."""
        out = self.tf.math.top_k(x, k=k, sorted=True)
        return out.values, out.indices

    def kth_largest(self, x, k, k_max: int):
        """The ``k``-th largest value of 1-D float32 ``x`` (``k`` a scalar int32, at most
        the Python int ``k_max``; 0 gives a value no entry exceeds): counting passes inside
        an XLA-compiled step, else an unsorted ``top_k`` of ``max(k, 1)`` entries."""
        tf = self.tf
        if _in_xla(tf):
            return kth_largest_by_counting(self, x, k)
        top = tf.math.top_k(x, k=tf.maximum(tf.cast(k, tf.int32), 1), sorted=False)
        return tf.reduce_min(top.values)

    def order_keys(self, x):
        """uint32 keys of float32 ``x`` in the order of the floats (-0.0 just below 0.0)."""
        bits = self.tf.bitcast(x, self.tf.int32)
        return self.tf.bitcast(self.tf.where(bits < 0, ~bits, bits | _SIGN), self.tf.uint32)

    def key_value(self, key):
        """The float32 whose ``order_keys`` is ``key``."""
        bits = self.tf.bitcast(key, self.tf.int32)
        return self.tf.bitcast(self.tf.where(bits < 0, bits & ~_SIGN, ~bits), self.tf.float32)

    def cond(self, pred, true_fn, false_fn):
        return self.tf.cond(pred, true_fn, false_fn)

    def fori_loop(self, n: int, body, init):
        """``body(i, value)`` for ``i`` in ``range(n)`` from ``init`` (a loop op, not ``n``
        copies of the body: XLA compiles it once)."""
        tf = self.tf
        _, out = tf.while_loop(lambda i, v: i < n, lambda i, v: (i + 1, body(i, v)),
                               (tf.constant(0), init), maximum_iterations=n)
        return out

    def scatter(self, indices, values, n):
        """A length-``n`` vector with ``values`` at ``indices`` (a permutation)."""
        return self.tf.scatter_nd(indices[:, None], values, self.tf.reshape(n, [1]))

    def unit_seed(self, seed: int, unit_index: int, step):
        """int64 [2]: the stateless seed of one unit at one step."""
        fold = self.tf.random.experimental.stateless_fold_in
        base = self.tf.constant([int(seed), 0x5EED], dtype=self.tf.int64)
        return fold(fold(base, int(unit_index)), self.tf.cast(step, self.tf.int64))

    def fold_in(self, seed, salt: int):
        return self.tf.random.experimental.stateless_fold_in(seed, salt)

    def uniform(self, shape, seed):
        return self.tf.random.stateless_uniform(shape, seed)

    def uniform_n(self, n, seed):
        """A vector of ``n`` uniform floats in [0, 1) (``n`` a scalar, maybe a tensor)."""
        return self.tf.random.stateless_uniform(self.tf.reshape(n, [1]), seed)


class _JAX:
    """jax.numpy ops (inside ``jax.jit``; static shapes)."""

    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax, self.jnp = jax, jnp
        self.float32, self.int32, self.bool, self.uint32 = (jnp.float32, jnp.int32, jnp.bool_,
                                                            jnp.uint32)
        self.int64 = jnp.int32  # JAX runs without x64 by default; steps fit in int32
        self.lowest = float(jnp.finfo(jnp.float32).min)

    def is_tensor(self, x) -> bool:
        return isinstance(x, self.jax.Array)

    def asarray(self, x, dtype=None):
        return self.jnp.asarray(x, dtype=dtype)

    def cast(self, x, dtype):
        return self.jnp.asarray(x).astype(dtype)

    def shape(self, x):
        return tuple(self.jnp.shape(x))

    def size(self, x):
        return int(self.jnp.size(x))

    def static_size(self, x):
        return int(self.jnp.size(x))

    def reshape(self, x, shape):
        return self.jnp.reshape(x, shape)

    def transpose(self, x):
        return self.jnp.transpose(x)

    def where(self, cond, a, b):
        return self.jnp.where(cond, a, b)

    def isnan(self, x):
        return self.jnp.isnan(x)

    def abs(self, x):
        return self.jnp.abs(x)

    def floor(self, x):
        return self.jnp.floor(x)

    def cos(self, x):
        return self.jnp.cos(x)

    def clip(self, x, lo, hi):
        return self.jnp.clip(x, lo, hi)

    def maximum(self, a, b):
        return self.jnp.maximum(a, b)

    def minimum(self, a, b):
        return self.jnp.minimum(a, b)

    def power(self, a, b):
        return self.jnp.power(a, b)

    def sum(self, x, axis=None):
        return self.jnp.sum(x, axis=axis)

    def equal(self, a, b):
        return self.jnp.equal(a, b)

    def mod(self, a, b):
        return self.jnp.mod(a, b)

    def logical_and(self, a, b):
        return self.jnp.logical_and(a, b)

    def arange(self, n):
        return self.jnp.arange(n)

    def full(self, shape, value):
        return self.jnp.full(shape, value, self.jnp.float32)

    # Sorting on the last axis through lax.top_k (ties to the lower index, as a stable
    # sort), which XLA runs several times faster on CPU than a stable lax.sort.
    def argsort_desc(self, x, axis=-1):
        assert axis in (-1, x.ndim - 1)
        return self.jax.lax.top_k(x, x.shape[-1])[1]

    def argsort(self, x, axis=-1):
        """Stable ascending order of integer or non-negative float ``x`` (negated for
        top_k: no -0.0 can arise)."""
        assert axis in (-1, x.ndim - 1)
        return self.jax.lax.top_k(-x, x.shape[-1])[1]

    def take(self, x, indices, axis=0):
        return self.jnp.take(x, indices, axis=axis)

    def top_k(self, x, k: int):
        return self.jax.lax.top_k(x, k)

    def kth_largest(self, x, k, k_max: int):
        """As ``_TF.kth_largest``, by counting (XLA's ``top_k`` costs a full sort); in
        a loop op where traced (``jit``), op by op when eager."""
        return kth_largest_by_counting(self, x, k, loop=isinstance(x, self.jax.core.Tracer))

    def order_keys(self, x):
        bits = self.jax.lax.bitcast_convert_type(x, self.jnp.int32)
        keys = self.jnp.where(bits < 0, ~bits, bits | _SIGN)
        return self.jax.lax.bitcast_convert_type(keys, self.jnp.uint32)

    def key_value(self, key):
        bits = self.jax.lax.bitcast_convert_type(key, self.jnp.int32)
        bits = self.jnp.where(bits < 0, bits & ~_SIGN, ~bits)
        return self.jax.lax.bitcast_convert_type(bits, self.jnp.float32)

    def cond(self, pred, true_fn, false_fn):
        return self.jax.lax.cond(pred, true_fn, false_fn)

    def fori_loop(self, n: int, body, init):
        return self.jax.lax.fori_loop(0, n, body, init)

    def scatter(self, indices, values, n):
        return self.jnp.zeros((n,), values.dtype).at[indices].set(values)

    def unit_seed(self, seed: int, unit_index: int, step):
        """A JAX PRNG key (uint32 [2]): the stateless seed of one unit at one step."""
        random = self.jax.random
        base = random.fold_in(random.PRNGKey(int(seed)), 0x5EED)
        return random.fold_in(random.fold_in(base, int(unit_index)),
                              self.jnp.asarray(step, self.jnp.int32))

    def fold_in(self, seed, salt: int):
        return self.jax.random.fold_in(seed, salt)

    def uniform(self, shape, seed):
        return self.jax.random.uniform(seed, shape, self.jnp.float32)

    def uniform_n(self, n, seed):
        return self.jax.random.uniform(seed, (int(n),), self.jnp.float32)


_SIGN = -2**31  # the sign bit of an int32


def _in_xla(tf) -> bool:
    """Whether the op being built goes into an XLA-compiled function (``jit_compile``, or a
    TPU step). TensorFlow has no public way to ask; its ``control_flow_util`` does it for
    its own ops."""
    if tf.executing_eagerly():
        return False
    from tensorflow.python.ops import control_flow_util
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def kth_largest_by_counting(xp, x, k, loop: bool = True):
    """``xp.kth_largest`` without sorting: the largest order key with at least ``k``
    entries at or above it, found bit by bit (32 counting passes over ``x``). Equal to the
    ``top_k`` threshold as a float; ``k`` = 0 gives +inf. ``loop``: the passes as one loop
    op, for a compiled function (unrolled, XLA's CPU runtime took 8 times longer to compile
    them and 40% longer to run them); False: op by op, for eager calls (JAX compiles a
    loop op at every eager call)."""
    keys = xp.order_keys(x)
    k = xp.cast(k, xp.int32)
    bits = xp.asarray(np.asarray([1 << b for b in range(31, -1, -1)], np.uint32))

    def narrow(i, prefix):
        candidate = prefix | xp.take(bits, i)
        count = xp.sum(xp.cast(keys >= candidate, xp.int32))
        return xp.where(count >= k, candidate, prefix)

    prefix = xp.asarray(0, xp.uint32)
    if loop:
        prefix = xp.fori_loop(32, narrow, prefix)
    else:
        for i in range(32):
            prefix = narrow(i, prefix)
    return xp.where(k > 0, xp.key_value(prefix), xp.asarray(float("inf"), xp.float32))


_CACHE = {}


def get(name: str):
    """The namespace ``"tensorflow"``, ``"jax"`` or ``"torch"`` (created on first use)."""
    if name not in _CACHE:
        if name == "tensorflow":
            _CACHE[name] = _TF()
        elif name == "jax":
            _CACHE[name] = _JAX()
        elif name == "torch":
            from tf_lottery.dst.arrays_torch import Torch
            _CACHE[name] = Torch()
        else:
            raise ValueError(f"tf-lottery's dynamic sparse training runs on the TensorFlow, "
                             f"JAX and PyTorch backends, not {name!r}")
    return _CACHE[name]


def namespace(x):
    """The namespace of tensor ``x`` (TF, JAX or torch), or None for numbers and numpy."""
    if "jax" in sys.modules and get("jax").is_tensor(x):
        return get("jax")
    if "torch" in sys.modules and get("torch").is_tensor(x):
        return get("torch")
    if get("tensorflow").is_tensor(x):
        return get("tensorflow")
    return None


TF = get("tensorflow")
