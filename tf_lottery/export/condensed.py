"""Condensed and sparse-kernel layers: sparse Dense / 1x1 convolutions that run faster.

A sparse kernel ``W[in, out]`` can run without its zeros in four ways, all with stock
TensorFlow ops, so the exported SavedModel loads with plain ``tf.saved_model.load``:

- ``"gather"``: condensed rows ``values[out, k]`` and ``indices[out, k]`` (``k`` = the
  largest fan-in; a constant fan-in kernel has no padding):
  ``y[b, o] = sum_j x[b, indices[o, j]] * values[o, j]``, one gather, multiply and
  reduce compiled by XLA (``jit_compile``);
- ``"gather_t"``: the same with the transposed layout ``values[k, out]``, gathering rows
  of ``x^T`` (contiguous in the batch: better at larger batches);
- ``"gather_loop"``: the transposed layout cut into chunks of ``CHUNK`` rows, summed by
  an XLA while loop into an accumulator that stays in cache (the fastest at batch 32);
- ``"sparse_matmul"``: ``tf.sparse.sparse_dense_matmul(W^T, x^T)`` (CSR-like, sparse
  operand first; wins at very high sparsity).

The gather paths are XLA functions (``jit_compile``), kept as such in the SavedModel: the
first call at each new batch size compiles them (tens of milliseconds).

``condense(model, batch_size)`` times each path against the dense kernel on the layer's
own shapes at ``batch_size`` (median of interleaved runs) and replaces a layer only where
a path is faster than dense by ``margin``; everything else stays dense. Measured on one
4,096 x 4,096 layer on the project's 2-core x86 CPU (``choose``, shared machine, so
ranges over repeated runs): at batch 1, gather_loop 2.3-3.5x at 90% sparsity and 3.9-7x
at 98%, the one-shot gathers 1.3-2.5x and 3.2-5.6x, sparse_matmul 0.3-0.7x and 1.6-2x;
at batch 32, gather_loop 3.6-4.5x and 6.6-12.6x, the one-shot gathers 0.2-0.3x and
0.8-1.4x, sparse_matmul 0.2x and 1.1x.
"""
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from tf_lottery._keras import keras, tf
from tf_lottery.export import timing
from tf_lottery.export.rebuild import rebuild

PATHS = ("gather", "gather_t", "gather_loop", "sparse_matmul")
CHUNK = 8  # rows of the [k, out] layout that one step of "gather_loop" adds up


@tf.function(jit_compile=True, autograph=False)
def _gather_rows(x, indices, values):
    return tf.reduce_sum(tf.gather(x, indices, axis=1) * values, axis=-1)


@tf.function(jit_compile=True, autograph=False)
def _gather_cols(x, indices_t, values_t):
    rows = tf.gather(tf.transpose(x), indices_t)  # [k, out, batch]
    return tf.transpose(tf.reduce_sum(rows * values_t[:, :, None], axis=0))


@tf.function(jit_compile=True, autograph=False)
def _gather_loop(x, indices_c, values_c):
    """``indices_c``, ``values_c``: [k / CHUNK, CHUNK, out]. One XLA loop step gathers
    CHUNK rows of x^T per output unit and adds them into a [out, batch] accumulator that
    stays in cache (7-9x faster than the one-shot gather at batch 32, same at batch 1)."""
    xt = tf.transpose(x)
    steps = tf.shape(indices_c)[0]

    def body(i, acc):
        rows = tf.gather(xt, indices_c[i])  # [CHUNK, out, batch]
        return i + 1, acc + tf.reduce_sum(rows * values_c[i][:, :, None], axis=0)

    acc = tf.zeros([tf.shape(indices_c)[2], tf.shape(x)[0]], x.dtype)
    _, acc = tf.while_loop(lambda i, _: i < steps, body, (0, acc))
    return tf.transpose(acc)


def condensed_arrays(kernel: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(indices[out, k], values[out, k])`` of a kernel ``[in, out]``; ``k`` is the largest
    number of non-zeros of an output unit (at least 1), shorter units padded with index 0
    and value 0."""
    kernel = np.asarray(kernel, dtype=np.float32)
    nonzero = kernel.T != 0
    k = max(1, int(nonzero.sum(axis=1).max(initial=0)))
    order = np.argsort(~nonzero, axis=1, kind="stable")[:, :k]  # non-zeros first, in order
    values = np.take_along_axis(kernel.T, order, axis=1)
    indices = np.where(values != 0, order, 0).astype(np.int32)
    return indices, values


def _matmul_2d(path: str, x, indices, values, dense_shape):
    if path == "gather":
        return _gather_rows(x, indices, values)
    if path == "gather_t":
        return _gather_cols(x, indices, values)
    if path == "gather_loop":
        return _gather_loop(x, indices, values)
    if path == "sparse_matmul":
        w_t = tf.sparse.SparseTensor(indices, values, dense_shape)
        return tf.transpose(tf.sparse.sparse_dense_matmul(w_t, x, adjoint_b=True))
    raise ValueError(f"unknown path {path!r}; use one of {PATHS}")


class CondensedDense(keras.layers.Layer):
    """``activation(x @ W + bias)`` over the last axis of ``x`` with a sparse ``W[in, out]``
    held condensed (see module doc): a drop-in for a Dense layer or a 1x1, stride-1
    convolution. Built by ``condense``; its weights are ``indices``, ``values`` (and
    ``bias``) in the layout of ``path``."""

    def __init__(self, units: int, in_features: int, nonzeros: int, path: str = "gather",
                 activation=None, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; use one of {PATHS}")
        self.units, self.in_features, self.nonzeros = int(units), int(in_features), int(nonzeros)
        self.path, self.use_bias = path, bool(use_bias)
        self.activation = keras.activations.get(activation)
        if path == "sparse_matmul":
            index_shape, value_shape = (self.nonzeros, 2), (self.nonzeros,)
            index_dtype = tf.int64
        else:
            k = self.nonzeros
            shape = {"gather": (self.units, k), "gather_t": (k, self.units),
                     "gather_loop": (-(-k // CHUNK), CHUNK, self.units)}[path]
            index_shape = value_shape = shape
            index_dtype = tf.int32
        self.indices = self.add_weight("indices", index_shape, index_dtype, trainable=False,
                                       initializer="zeros")
        self.values = self.add_weight("values", value_shape, tf.float32, initializer="zeros")
        self.bias = (self.add_weight("bias", (self.units,), tf.float32, initializer="zeros")
                     if self.use_bias else None)

    def set_kernel(self, kernel: np.ndarray, bias: Optional[np.ndarray] = None) -> None:
        """Loads a dense ``kernel[in, out]`` (zeros are dropped) and ``bias``."""
        kernel = np.asarray(kernel, np.float32).reshape(self.in_features, self.units)
        if self.path == "sparse_matmul":
            rows, cols = np.nonzero(kernel.T)
            self.indices.assign(np.stack([rows, cols], 1).astype(np.int64))
            self.values.assign(kernel.T[rows, cols])
        else:
            indices, values = condensed_arrays(kernel)
            if self.path != "gather":
                indices, values = indices.T.copy(), values.T.copy()
            if self.path == "gather_loop":  # pad k to whole chunks with index 0, value 0
                shape = self.indices.shape
                pad = int(np.prod(shape[:2])) - indices.shape[0]
                indices = np.pad(indices, ((0, pad), (0, 0))).reshape(shape)
                values = np.pad(values, ((0, pad), (0, 0))).reshape(shape)
            self.indices.assign(indices)
            self.values.assign(values)
        if self.use_bias:
            self.bias.assign(np.zeros(self.units, np.float32) if bias is None else bias)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32)
        shape = tf.shape(x)
        flat = tf.reshape(x, [-1, self.in_features])
        y = _matmul_2d(self.path, flat, self.indices, self.values,
                       [self.units, self.in_features])
        if self.use_bias:
            y = y + self.bias
        y = tf.reshape(y, tf.concat([shape[:-1], [self.units]], 0))
        return self.activation(y)

    def get_config(self):
        config = super().get_config()
        config.update({"units": self.units, "in_features": self.in_features,
                       "nonzeros": self.nonzeros, "path": self.path,
                       "activation": keras.activations.serialize(self.activation),
                       "use_bias": self.use_bias})
        return config


def eligible(layer) -> bool:
    """A Dense layer, or a 1x1 stride-1 ungrouped channels-last 2-D convolution."""
    L = keras.layers
    if type(layer) is L.Dense:
        return True
    return (type(layer) is L.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) == (1, 1) and layer.groups == 1
            and layer.data_format == "channels_last")


def _kernel_2d(layer) -> np.ndarray:
    k = layer.kernel.numpy()
    return k.reshape(k.shape[-2], k.shape[-1])


def _make(layer, path: str, kernel: np.ndarray) -> CondensedDense:
    if path == "sparse_matmul":
        nonzeros = int(np.count_nonzero(kernel))
    else:
        nonzeros = max(1, int(np.count_nonzero(kernel, axis=0).max(initial=0)))
    new = CondensedDense(kernel.shape[1], kernel.shape[0], nonzeros, path,
                         activation=keras.activations.serialize(layer.activation),
                         use_bias=layer.use_bias, name=layer.name)
    new.build(tf.TensorShape([None, kernel.shape[0]]))
    new.set_kernel(kernel, layer.bias.numpy() if layer.use_bias else None)
    return new


@contextlib.contextmanager
def _quiet_retracing():
    """Timing builds one tf.function per candidate and layer shape, which TensorFlow
    reports as retracing; those warnings say nothing to the user here."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        yield
    finally:
        logger.setLevel(level)


def median_times(fns: Dict[str, object], x, rounds: int = 20,
                 min_seconds: float = 0.0) -> Dict[str, float]:
    """Median seconds per call of each function on ``x`` (``timing.round_robin``; the
    result is fetched to the host inside the timed call)."""
    runners = {n: (lambda f=f: np.asarray(f(x))) for n, f in fns.items()}
    return timing.round_robin(runners, rounds, min_seconds)


def choose(layer, batch_size: int, paths: Sequence[str] = PATHS, rounds: int = 20,
           margin: float = 1.1) -> Dict[str, object]:
    """Times the dense kernel and each path on ``layer``'s shapes at ``batch_size``.

    Returns {"layer", "shape", "sparsity", "ms": {path: median ms}, "path" (the fastest,
    or "dense" unless it beats dense by ``margin``), "speedup" (dense / chosen)}.
    """
    kernel = _kernel_2d(layer)
    positions = int(np.prod([d for d in layer.input_shape[1:-1]], dtype=np.int64))
    rows = batch_size * max(1, positions)
    x = tf.constant(np.random.default_rng(0).normal(size=(rows, kernel.shape[0]))
                    .astype(np.float32))
    dense_w = tf.constant(kernel)
    fns = {"dense": tf.function(lambda v: tf.matmul(v, dense_w), autograph=False)}
    reference = fns["dense"](x).numpy()
    for path in paths:
        candidate = _make(layer, path, kernel)
        candidate.activation = keras.activations.linear
        bias = candidate.bias.numpy() if candidate.use_bias else 0.0
        fn = tf.function(lambda v, c=candidate: c(v), autograph=False)
        got = fn(x).numpy() - bias
        if np.max(np.abs(got - reference), initial=0.0) > 1e-4 * max(1.0, np.abs(reference).max()):
            raise AssertionError(f"condensed path {path} of {layer.name} differs from dense")
        fns[path] = fn
    ms = {n: 1e3 * t for n, t in median_times(fns, x, rounds).items()}
    best = min(paths, key=lambda p: ms[p]) if paths else "dense"
    chosen = best if paths and ms["dense"] / ms[best] >= margin else "dense"
    return {"layer": layer.name, "shape": list(kernel.shape),
            "sparsity": float(1.0 - np.count_nonzero(kernel) / kernel.size),
            "batch_size": int(batch_size), "ms": ms, "path": chosen,
            "speedup": ms["dense"] / ms[chosen]}


def condense(model, batch_size: int = 1, paths: Sequence[str] = PATHS,
             min_sparsity: float = 0.5, rounds: int = 20, margin: float = 1.1,
             force: Optional[str] = None,
             timings: Optional[Dict] = None) -> Tuple[object, List[Dict]]:
    """A copy of the plain functional/Sequential ``model`` in which every eligible layer
    (see ``eligible``) at least ``min_sparsity`` sparse runs on the path that measured
    fastest at ``batch_size``, where that beats dense by ``margin`` (see ``choose``).
    Then the whole model is timed against ``model`` at ``batch_size``; if it is not
    faster, ``model`` itself is returned and every row says "dense".

    ``force`` uses that path for every eligible sparse layer without timing (tests).
    ``timings``, if a dict, receives that whole-model timing when it is measured:
    {"dense": ms, "condensed": ms, "rounds": rounds}.
    Returns ``(model, rows)``: one row per eligible layer, with the path chosen
    ("dense" where nothing was faster) and its measured speed-up.
    """
    if force is not None and force not in PATHS:
        raise ValueError(f"condense={force!r} is not a kernel path; pass True (timed per "
                         f"layer) or one of {PATHS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    rows, replace = [], {}
    for layer in model.layers:
        if not eligible(layer):
            continue
        kernel = _kernel_2d(layer)
        sparsity = 1.0 - np.count_nonzero(kernel) / kernel.size
        if sparsity < min_sparsity:
            rows.append({"layer": layer.name, "shape": list(kernel.shape),
                         "sparsity": float(sparsity), "path": "dense", "speedup": 1.0,
                         "ms": {}, "note": f"sparsity below {min_sparsity:g}"})
            continue
        if force is not None:
            row = {"layer": layer.name, "shape": list(kernel.shape),
                   "sparsity": float(sparsity), "path": force, "speedup": None, "ms": {}}
        else:
            with _quiet_retracing():
                row = choose(layer, batch_size, paths, rounds, margin)
        rows.append(row)
        if row["path"] != "dense":
            replace[layer.name] = row["path"]
    if not replace:
        return model, rows

    def clone(layer):
        if layer.name in replace:
            return _make(layer, replace[layer.name], _kernel_2d(layer))
        return type(layer).from_config(layer.get_config())

    rebuilt = rebuild(model, clone, built=replace)
    if force is None:
        sample = [tf.zeros([batch_size] + [int(d) for d in t.shape[1:]], t.dtype)
                  for t in model.inputs]
        with _quiet_retracing():
            ms = model_latency({"dense": model, "condensed": rebuilt},
                               sample[0] if len(sample) == 1 else sample, rounds)
        if timings is not None:
            timings.update(ms, rounds=rounds)
        if ms["condensed"] >= ms["dense"]:
            for row in rows:
                if row["path"] != "dense":
                    row.update(path="dense", speedup=1.0,
                               note=f"whole model {ms['dense'] / ms['condensed']:.2f}x: "
                                    "kept dense")
            return model, rows
    return rebuilt, rows


def model_latency(models: Dict[str, object], sample, rounds: int = 30) -> Dict[str, float]:
    """Median ms per call of each Keras model (as a ``tf.function``, inference mode) on
    ``sample``, calls interleaved round-robin."""
    fns = {}
    for name, m in models.items():
        fns[name] = tf.function(lambda v, m=m: m(v, training=False), autograph=False)
    return {n: 1e3 * t for n, t in median_times(fns, sample, rounds).items()}


def convert_tflite(saved_model_dir: str, info: Dict) -> Optional[bytes]:
    """Float TFLite flatbuffer of a condensed SavedModel, or None with the reason in
    ``info["condensed_error"]`` (TFLite has no sparse-dense matmul; the gathers convert)."""
    from tf_lottery.export import tflite
    try:
        return tflite.convert(saved_model_dir, sparse=False)
    except Exception as error:  # the converter raises several types
        info["condensed_error"] = tflite._summarize_error(error)
        return None


def table_lines(report) -> List[str]:
    """The printed lines for the "compact" and "condensed" parts of an export report."""
    lines = []
    comp = report.get("compact")
    if comp:
        removed = ", ".join(f"{r['layer']} {r['before']}->{r['after']}" for r in comp["layers"])
        lines.append(f"Compact: {comp['params_before']:,} -> {comp['params_after']:,} "
                     f"parameters; units removed: {removed or 'none'}")
    cond = report.get("condensed")
    if cond:
        lines.append(f"Kernel per layer (timed at batch {cond['batch_size']}):")
        for r in cond["layers"]:
            speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
            lines.append(f"  {r['layer']:24s} {'x'.join(map(str, r['shape'])):>11s} "
                         f"{100 * r['sparsity']:6.2f}% sparse  {r['path']:13s} {speed}")
    tfl_ms = (report.get("latency") or {}).get("median_ms", {})
    if "condensed" in tfl_ms:
        lines.append(f"TFLite condensed (model_condensed.tflite): {tfl_ms['condensed']:.3f} ms "
                     f"at batch 1, {tfl_ms['dense'] / tfl_ms['condensed']:.2f}x the dense TFLite")
    elif (report.get("tflite") or {}).get("condensed_error"):
        lines.append("TFLite condensed: not converted: " + report["tflite"]["condensed_error"])
    lat = report.get("saved_model_latency")
    if lat:
        ms = lat["median_ms"]
        lines.append(f"SavedModel graph latency at batch {lat['batch_size']} (median of "
                     f"{lat['runs']}): dense {ms['dense']:.3f} ms, exported "
                     f"{ms['exported']:.3f} ms ({lat['speedup']:.2f}x)")
    return lines
