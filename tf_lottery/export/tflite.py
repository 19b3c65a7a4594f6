"""TFLite conversion (dense and sparse-encoded) and interpreter latency.

The sparse model is converted with ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``: the
converter stores each weight tensor that is sparse enough in TFLite's compressed
sparse format and inserts a ``DENSIFY`` op in front of its consumer. What that buys
at run time depends on the kernel that consumes it:

- XNNPACK (TFLite's default CPU delegate) runs a *sparse subgraph* (Fast Sparse
  ConvNets, Elsen et al. 2020) only for 1x1 ``CONV_2D`` weights, at least 2/3 zeros over
  the subgraph, in a CNN that starts with a 3x3 stride-2 conv with padding 1 on each
  side and 3 input channels and ends with a spatial ``MEAN`` (MobileNet-like models).
  XNNPACK turns sparse inference off on x86 CPUs that have AVX (its sparse kernels are
  SSE-only and its dense AVX kernels are expected to win), so sparse speed shows on
  ARM (phones) and on x86 without AVX, not on a typical x86 desktop or server.
- Every other sparse weight (``FULLY_CONNECTED``, KxK convolutions, models without that
  structure) is densified once when the interpreter is prepared: the file is smaller,
  the speed is the dense model's.

The latency is measured in this process with the LiteRT interpreter
(``ai_edge_litert``), or ``tf.lite.Interpreter`` if LiteRT is not installed: all
interpreters are built first, then invoked round-robin, so drifts of the machine hit
them alike, and the median per model is reported.
"""
import os
import platform
import time
import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tf_lottery._keras import tf


def interpreter_class():
    """(Interpreter class, description): LiteRT's, or tf.lite's when LiteRT is missing."""
    try:
        from ai_edge_litert import interpreter as litert_interpreter
        try:
            from importlib.metadata import version
            desc = f"ai_edge_litert {version('ai-edge-litert')}"
        except Exception:  # pragma: no cover - metadata missing
            desc = "ai_edge_litert"
        return litert_interpreter.Interpreter, desc
    except ImportError:  # pragma: no cover - LiteRT is a dependency
        warnings.warn("ai-edge-litert is not installed; measuring with the deprecated "
                      "tf.lite.Interpreter (pip install ai-edge-litert)")
        return tf.lite.Interpreter, f"tf.lite.Interpreter (TensorFlow {tf.__version__})"


def _drop_location(message: str) -> str:
    """``loc(callsite(...)): text`` -> ``text`` (MLIR prefixes messages with locations)."""
    message = message.strip()
    if not message.startswith("loc("):
        return message
    depth = 0
    for i, char in enumerate(message):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and char == ")":
            return message[i + 1:].lstrip(": ").strip()
    return message


def _summarize_error(error: Exception) -> str:
    """The gist of a converter error (its full text dumps the graph, weights included)."""
    text = str(error)
    facts = []
    for line in text.splitlines():
        line = line.strip()
        found = None
        if "error:" in line:
            found = _drop_location(line.split("error:", 1)[1])
            if found.startswith("failed while converting"):
                found = None
        elif line.startswith(("TF Select ops:", "Custom ops:")):
            found = line
        elif "Error code:" in line:
            found = line.split("Error code:", 1)[1].strip()
        if found and found not in facts:
            facts.append(found)
    if not facts:
        facts = [text.strip().splitlines()[0]] if text.strip() else []
    return f"{type(error).__name__}: " + "; ".join(facts)[:2000]


def convert(saved_model_dir: str, sparse: bool) -> bytes:
    """The float TFLite flatbuffer of ``saved_model_dir``'s ``serving_default`` signature.

    ``sparse=True`` adds ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (no quantization).
    Raises whatever the converter raises (``ConverterError`` for ops TFLite lacks).
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=["serving_default"])
    if sparse:
        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    return converter.convert()


def convert_both(saved_model_dir: str) -> Dict[str, object]:
    """Dense and sparse flatbuffers, or the reason conversion failed.

    Returns:
      {"dense": bytes or None, "sparse": bytes or None, "error": None or a short message,
       "error_detail": None or the converter's full message (truncated)}.
    """
    result = {"dense": None, "sparse": None, "error": None, "error_detail": None}
    try:
        result["dense"] = convert(saved_model_dir, sparse=False)
        result["sparse"] = convert(saved_model_dir, sparse=True)
    except Exception as error:  # the converter raises several types (ConverterError, ...)
        result["error"] = _summarize_error(error)
        result["error_detail"] = str(error)[:20000]
    return result


def _make_interpreter(cls, content: bytes, num_threads: int, delegates: bool = True):
    kwargs = {"model_content": content, "num_threads": num_threads}
    if not delegates:
        if cls is tf.lite.Interpreter:
            resolver = tf.lite.experimental.OpResolverType
        else:
            from ai_edge_litert.interpreter import OpResolverType as resolver
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return cls(**kwargs)


def _io(interpreter):
    """({input name: detail}, {output name: detail}) of ``serving_default``, or of the
    graph's tensors (by position: "input_0", ...) if the model has no signature."""
    try:
        runner = interpreter.get_signature_runner("serving_default")
        by_index_in = {d["index"]: d for d in interpreter.get_input_details()}
        by_index_out = {d["index"]: d for d in interpreter.get_output_details()}
        inputs = {n: by_index_in[d["index"]] for n, d in runner.get_input_details().items()}
        outputs = {n: by_index_out[d["index"]] for n, d in runner.get_output_details().items()}
        return inputs, outputs
    except (ValueError, KeyError, AttributeError):
        return ({f"input_{i}": d for i, d in enumerate(interpreter.get_input_details())},
                {f"output_{i}": d for i, d in enumerate(interpreter.get_output_details())})


def _prepare(interpreter, example: Optional[Mapping[str, np.ndarray]], rng):
    """Sizes dynamic dimensions (from ``example``, else 1), allocates and sets the inputs:
    ``example`` (one example per input name, with its batch dimension of 1) or random
    values. Returns the output details by name."""
    inputs, _ = _io(interpreter)
    values = {}
    for i, (name, d) in enumerate(inputs.items()):
        if example is not None:
            key = name if name in example else list(example)[i] if i < len(example) else None
            if key is not None:
                values[name] = np.asarray(example[key], dtype=np.dtype(d["dtype"]))
        signature = [int(x) for x in d.get("shape_signature", d["shape"])]
        if any(x < 0 for x in signature):
            shape = (list(values[name].shape) if name in values
                     else [max(x, 1) for x in signature])
            interpreter.resize_tensor_input(d["index"], shape)
    interpreter.allocate_tensors()
    inputs, outputs = _io(interpreter)
    for name, d in inputs.items():
        value = values.get(name)
        if value is None:
            shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
            if np.issubdtype(dtype, np.floating):
                value = rng.normal(size=shape).astype(dtype)
            elif dtype == np.bool_:
                value = np.zeros(shape, dtype)
            else:
                value = rng.integers(0, 2, size=shape).astype(dtype)
        interpreter.set_tensor(d["index"], value)
    return outputs


def _max_diff(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Optional[float]:
    diffs = [float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
             for k in a if k in b and np.shape(a[k]) == np.shape(b[k]) and np.size(a[k])]
    return max(diffs) if diffs else None


def measure_latency(models: Mapping[str, bytes], runs: int = 50, warmup: int = 5,
                    num_threads: int = 1, example: Optional[Mapping[str, np.ndarray]] = None,
                    reference: Optional[Mapping[str, np.ndarray]] = None,
                    seed: int = 0) -> Dict[str, object]:
    """Median ``invoke()`` time of each TFLite model, measured round-robin in this process.

    Args:
      models: name -> TFLite flatbuffer.
      runs, warmup: timed and untimed invocations per model.
      num_threads: interpreter threads.
      example: {input name: array with batch 1} fed to every model; default random
        (batch 1 where the batch is dynamic).
      reference: {output name: array}, the expected outputs on ``example``.

    Returns {"interpreter", "num_threads", "runs", "warmup", "median_ms": {name: ms},
    "min_ms": {name: ms}, "output_max_abs_diff": {name: max |output - first model's|},
    "reference_max_abs_diff": {name: max |output - reference|} (with ``reference``)}.
    """
    cls, desc = interpreter_class()
    interpreters, output_details = {}, {}
    for name, content in models.items():
        interpreter = _make_interpreter(cls, content, num_threads)
        output_details[name] = _prepare(interpreter, example, np.random.default_rng(seed))
        interpreters[name] = interpreter
    times: Dict[str, List[float]] = {name: [] for name in interpreters}
    for i in range(warmup + runs):
        for name, interpreter in interpreters.items():
            start = time.perf_counter()
            interpreter.invoke()
            elapsed = time.perf_counter() - start
            if i >= warmup:
                times[name].append(elapsed)
    outputs = {name: {k: it.get_tensor(d["index"]) for k, d in output_details[name].items()}
               for name, it in interpreters.items()}
    first = next(iter(outputs.values()))
    result = {"interpreter": desc, "num_threads": num_threads, "runs": runs, "warmup": warmup,
              "median_ms": {n: 1e3 * float(np.median(t)) for n, t in times.items()},
              "min_ms": {n: 1e3 * float(np.min(t)) for n, t in times.items()},
              "output_max_abs_diff": {n: _max_diff(o, first) for n, o in outputs.items()}}
    if reference is not None:
        result["reference_max_abs_diff"] = {n: _max_diff(o, reference)
                                            for n, o in outputs.items()}
    return result


def analyze_sparse(content: bytes) -> Dict[str, object]:
    """Which ops consume the sparse-encoded weights of a TFLite model.

    Returns {"sparse_tensors": number of DENSIFY ops, "consumers": {"CONV_2D 1x1": n,
    "CONV_2D 3x3": n, "FULLY_CONNECTED": n, ...}}.
    """
    cls, _ = interpreter_class()
    interpreter = _make_interpreter(cls, content, 1, delegates=False)
    ops = interpreter._get_ops_details()  # no public API lists the graph's ops
    shapes = {d["index"]: tuple(int(s) for s in d["shape"])
              for d in interpreter.get_tensor_details()}
    densified = {int(t) for op in ops if op["op_name"] == "DENSIFY" for t in op["outputs"]}
    consumers: Dict[str, int] = {}
    for op in ops:
        for t in op["inputs"]:
            if int(t) in densified:
                name = op["op_name"]
                shape = shapes.get(int(t), ())
                if name in ("CONV_2D", "DEPTHWISE_CONV_2D") and len(shape) == 4:
                    name = f"{name} {shape[1]}x{shape[2]}"
                consumers[name] = consumers.get(name, 0) + 1
    return {"sparse_tensors": len(densified), "consumers": dict(sorted(consumers.items()))}


def host_allows_xnnpack_sparse() -> Optional[bool]:
    """False on x86 with AVX (XNNPACK disables sparse inference there), True on ARM and
    on x86 without AVX, None if it cannot tell."""
    machine = platform.machine().lower()
    if machine.startswith(("arm", "aarch64")):
        return True
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            return None
        if not flags:
            return None
        return "avx" not in flags.split()
    return None


def speed_note(analysis: Optional[Mapping[str, object]],
               speedup: Optional[float] = None) -> str:
    """Says where the sparse TFLite model can run faster than the dense one, and why not."""
    parts = []
    host = host_allows_xnnpack_sparse()
    if host is False:
        parts.append("this host is x86 with AVX, where XNNPACK turns its sparse kernels "
                     "off: the sparse model is densified at load and runs at dense speed; "
                     "expect sparse speed-ups on ARM CPUs (phones) instead")
    elif host is True:
        parts.append(f"this host ({platform.machine()}) lets XNNPACK use its sparse kernels")
    consumers = dict((analysis or {}).get("consumers", {}))
    if consumers:
        one_by_one = consumers.get("CONV_2D 1x1", 0)
        other = sum(n for k, n in consumers.items() if k != "CONV_2D 1x1")
        if one_by_one:
            parts.append(f"{one_by_one} sparse 1x1 CONV_2D weight(s) can use XNNPACK's sparse "
                         "kernels if the network is MobileNet-like (3x3/2 first conv with "
                         "symmetric padding 1, 1x1 convs, 3x3/5x5 depthwise convs, spatial "
                         "MEAN at the end) and >= 2/3 of their weights are zero")
        if other:
            parts.append(f"{other} other sparse weight(s) ("
                         + ", ".join(f"{k}: {n}" for k, n in consumers.items()
                                     if k != "CONV_2D 1x1")
                         + ") are densified at load: smaller file, dense speed")
    elif analysis is not None:
        parts.append("the converter stored no weight in sparse format (too few zeros or "
                     "no supported op): the sparse model equals the dense one")
    if speedup is not None:
        parts.append(f"measured dense/sparse latency ratio here: {speedup:.2f}x")
    return "; ".join(parts) + "." if parts else ""


__all__: Sequence[str] = ("convert", "convert_both", "measure_latency", "analyze_sparse",
                          "host_allows_xnnpack_sparse", "speed_note", "interpreter_class")


def write_and_time(converted: Mapping[str, object], folder: str, filenames: Mapping[str, str],
                   files: Dict[str, dict], info: Dict[str, object], *, example, reference,
                   runs: int, num_threads: int, stacklevel: int = 3):
    """Writes the models ``convert_both`` returned and times them: the one LiteRT step of
    every export.

    Each ``converted[key]`` (bytes) is written to ``folder/filenames[key]`` and its sizes
    recorded in ``files``; a conversion error goes to ``info`` (and a warning). Otherwise
    the written models are timed (``measure_latency`` on the first example of ``example``,
    outputs checked against ``reference``) and the sparse one's encoding analysed.
    Returns ``(latency, analysis)``, each None when not measured.
    """
    from tf_lottery.export.report import file_sizes

    for key, name in filenames.items():
        if converted.get(key) is not None:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(converted[key])
            files[name] = file_sizes(os.path.join(folder, name))
    if converted["error"]:
        info["error"] = converted["error"]
        info["error_detail"] = converted["error_detail"][:4000]
        warnings.warn(f"TFLite conversion failed; the SavedModel is written: "
                      f"{converted['error']}", UserWarning, stacklevel=stacklevel)
        return None, None
    latency = analysis = None
    try:
        analysis = analyze_sparse(converted["sparse"])
        latency = measure_latency(
            {k: converted[k] for k in filenames if converted.get(k) is not None},
            runs=runs, num_threads=num_threads,
            example={k: v[:1] for k, v in example.items()},
            reference={n: r[:1] for n, r in reference.items()})
        med = latency["median_ms"]
        latency["speedup"] = med["dense"] / med["sparse"] if med["sparse"] else None
    except Exception as error:  # the files are written; say why there is no timing
        info["latency_error"] = f"{type(error).__name__}: {error}"[:2000]
        warnings.warn("TFLite models written but could not be run: " + info["latency_error"],
                      UserWarning, stacklevel=stacklevel)
    return latency, analysis
