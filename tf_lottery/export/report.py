"""What sparsity is worth: sizes, FLOPs, latency, and the printed table of an export.

FLOPs are counted as in the RigL paper (Evci et al. 2020): multiply-adds of the
Dense and convolution layers for one example, the dense count from the shapes, the
sparse count scaling each kernel's multiply-adds by its fraction of non-zeros.
Biases, batch norm, activations and pooling are left out (they are a small share and
do not change with sparsity); layers with weights that are not counted are listed.
"""
import gzip
import io
import os
import tarfile
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from tf_lottery._keras import keras
from tf_lottery.export.condensed import table_lines

try:  # tf_keras's node keys: which nodes of a shared layer belong to a model
    from tf_keras.src.engine.functional import _make_node_key
except ImportError:  # pragma: no cover - older tf_keras layout
    def _make_node_key(layer_name, node_index):
        return f"{layer_name}_ib-{node_index}"


# ----------------------------------------------------------------------------- sizes

GZIP_LEVEL = 6  # gzip's default: level 9 is 10x slower on float weights for ~10% less


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0))


def file_sizes(path: str) -> Dict[str, int]:
    """{"bytes", "gzip_bytes"} of a file, or of a directory as one .tar.gz (gzip level
    ``GZIP_LEVEL``)."""
    if os.path.isdir(path):
        total = sum(os.path.getsize(os.path.join(root, f))
                    for root, _, files in os.walk(path) for f in files)
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
            with tarfile.open(fileobj=gz, mode="w") as tar:
                tar.add(path, arcname=os.path.basename(path))
        return {"bytes": total, "gzip_bytes": len(buffer.getvalue())}
    with open(path, "rb") as f:
        data = f.read()
    return {"bytes": len(data), "gzip_bytes": gzip_size(data)}


# ----------------------------------------------------------------------------- FLOPs

def _spatial(shape, data_format) -> Optional[List[int]]:
    dims = list(shape[2:]) if data_format == "channels_first" else list(shape[1:-1])
    if any(d is None for d in dims):
        return None
    return [int(d) for d in dims]


def layer_madds(layer, input_shape, output_shape, layers=None
                ) -> Optional[List[Tuple[object, int]]]:
    """[(kernel variable, multiply-adds per example)] of one call of ``layer``
    (``layers``: the Keras layers module it comes from, tf_keras's by default).

    None when the layer type is not counted or a needed dimension is unknown; [] for a
    layer without multiply-adds.
    """
    L = layers or keras.layers
    fmt = getattr(layer, "data_format", "channels_last")
    if isinstance(layer, L.Dense):
        dims = list(output_shape[1:-1])
        if any(d is None for d in dims):
            return None
        return [(layer.kernel, int(np.prod(dims, dtype=np.int64)) * int(np.prod(layer.kernel.shape)))]
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        spatial = _spatial(output_shape, fmt)
        if spatial is None:
            return None
        positions = int(np.prod(spatial, dtype=np.int64))
        return [(layer.depthwise_kernel, positions * int(np.prod(layer.depthwise_kernel.shape))),
                (layer.pointwise_kernel, positions * int(np.prod(layer.pointwise_kernel.shape)))]
    depthwise_types = tuple(t for t in (getattr(L, "DepthwiseConv1D", None), L.DepthwiseConv2D)
                            if t is not None)
    if isinstance(layer, depthwise_types):
        spatial = _spatial(output_shape, fmt)
        if spatial is None:
            return None
        return [(layer.depthwise_kernel,
                 int(np.prod(spatial, dtype=np.int64)) * int(np.prod(layer.depthwise_kernel.shape)))]
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        spatial = _spatial(input_shape, fmt)  # each input position scatters the whole kernel
        if spatial is None:
            return None
        return [(layer.kernel, int(np.prod(spatial, dtype=np.int64)) * int(np.prod(layer.kernel.shape)))]
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        spatial = _spatial(output_shape, fmt)  # kernel is (k..., in/groups, out)
        if spatial is None:
            return None
        return [(layer.kernel, int(np.prod(spatial, dtype=np.int64)) * int(np.prod(layer.kernel.shape)))]
    if isinstance(layer, (L.Embedding, L.BatchNormalization, L.LayerNormalization)):
        return []
    return None


def _calls(model):
    """(layer, input_shape, output_shape) of every layer call of ``model``, nested models
    expanded; only the nodes that belong to the model (a stripped model shares its layers
    with the masked one, whose calls are other nodes of the same layers)."""
    network_nodes = getattr(model, "_network_nodes", None)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _calls(layer)
            continue
        nodes = list(enumerate(layer._inbound_nodes))
        if network_nodes is not None:
            nodes = [(i, n) for i, n in nodes if _make_node_key(layer.name, i) in network_nodes]
        nodes = [(i, n) for i, n in nodes if not n.is_input]
        if not nodes:
            try:
                yield layer, layer.input_shape, layer.output_shape
            except (AttributeError, RuntimeError):
                yield layer, None, None
            continue
        for _, node in nodes:
            yield layer, node.input_shapes, node.output_shapes


def keras3_calls(model):
    """(layer, input_shape, output_shape) of every layer of a Keras 3 functional ``model``
    (nested models expanded; shapes None where the layer has no single call)."""
    for layer in model.layers:
        if hasattr(layer, "layers") and hasattr(layer, "_nodes_by_depth"):
            yield from keras3_calls(layer)
            continue
        try:
            yield layer, layer.input.shape, layer.output.shape
        except (AttributeError, ValueError, RuntimeError):
            yield layer, None, None


def flops(model, calls=None, layers=None) -> Dict[str, object]:
    """Dense and sparse multiply-adds per example of ``model`` (plain or stripped).

    ``calls`` and ``layers`` (a Keras 3 model: ``keras3_calls(model)``, ``keras.layers``)
    default to tf_keras's.

    Returns {"unit", "dense", "sparse", "ratio" (dense / sparse), "layers": [{"layer",
    "weight", "dense", "sparse", "density"}], "not_counted": [layer names]}.
    """
    rows, not_counted = [], []
    for layer, input_shape, output_shape in (_calls(model) if calls is None else calls):
        if not layer.weights:
            continue
        counted = None
        if output_shape is not None:
            try:
                counted = layer_madds(layer, input_shape, output_shape, layers)
            except (TypeError, IndexError, ValueError):
                counted = None
        if counted is None:
            if layer.name not in not_counted:
                not_counted.append(layer.name)
            continue
        for kernel, madds in counted:
            value = kernel.numpy()
            density = float(np.count_nonzero(value)) / value.size if value.size else 1.0
            rows.append({"layer": layer.name, "weight": kernel.name.split(":")[0].split("/")[-1],
                         "dense": int(madds), "sparse": int(round(madds * density)),
                         "density": density})
    dense = sum(r["dense"] for r in rows)
    sparse = sum(r["sparse"] for r in rows)
    return {"unit": "multiply-adds per example (Dense/Conv kernels)", "dense": dense,
            "sparse": sparse, "ratio": (dense / sparse) if sparse else None, "layers": rows,
            "not_counted": not_counted}


def parameter_counts(model) -> Dict[str, int]:
    """All weights of ``model``: parameters and non-zeros."""
    params = nonzeros = 0
    for w in model.weights:
        value = w.numpy()
        params += value.size
        nonzeros += int(np.count_nonzero(value))
    return {"parameters": params, "nonzeros": nonzeros}


# ----------------------------------------------------------------------------- table

def _human(n: Optional[float], unit: str = "") -> str:
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}" if float(n).is_integer() else f"{n:.3g}{unit}"


def _ms(value: float) -> str:
    return f"{1e3 * value:.1f} us" if value < 1 else f"{value:.2f} ms"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def table(report: Mapping[str, object]) -> str:
    """The printable summary of an ``export_report.json``."""
    rows = [("", "dense", "sparse", "dense/sparse")]
    params = report["parameters"]
    rows.append(("parameters (all weights)", f"{params['parameters']:,}",
                 f"{params['nonzeros']:,} non-zero", _ratio(params["parameters"],
                                                             params["nonzeros"])))
    prunable = report.get("prunable")
    if prunable:
        rows.append(("prunable weights", f"{prunable['params']:,}",
                     f"{prunable['active']:,} active", _ratio(prunable["params"],
                                                              prunable["active"])))
    f = report["flops"]
    rows.append(("FLOPs/example (mult-adds)", _human(f["dense"]), _human(f["sparse"]),
                 _ratio(f["dense"], f["sparse"])))
    files = report["files"]
    sm = files.get("saved_model")
    if sm:
        rows.append(("SavedModel (dense storage)", _human(sm["bytes"], "B"), "-", "-"))
        rows.append((f"  gzip -{GZIP_LEVEL}", _human(sm["gzip_bytes"], "B"), "-", "-"))
    d, s = files.get("model_dense.tflite"), files.get("model_sparse.tflite")
    if d and s:
        rows.append(("TFLite file", _human(d["bytes"], "B"), _human(s["bytes"], "B"),
                     _ratio(d["bytes"], s["bytes"])))
        rows.append((f"TFLite file, gzip -{GZIP_LEVEL}", _human(d["gzip_bytes"], "B"),
                     _human(s["gzip_bytes"], "B"), _ratio(d["gzip_bytes"], s["gzip_bytes"])))
    lat = report.get("latency")
    if lat:
        med = lat["median_ms"]
        rows.append((f"TFLite latency (median of {lat['runs']}, {lat['num_threads']} thr)",
                     _ms(med["dense"]), _ms(med["sparse"]),
                     _ratio(med["dense"], med["sparse"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    tfl = report.get("tflite", {})
    if tfl.get("error"):
        lines.append(f"TFLite conversion failed: {tfl['error']}")
    elif not tfl.get("enabled", True):
        lines.append("TFLite: not requested")
    if lat and lat.get("reference_max_abs_diff"):
        ref = lat["reference_max_abs_diff"]
        lines.append("TFLite vs model on one example: max |diff| "
                     + ", ".join(f"{k} {v:.2e}" for k, v in ref.items() if v is not None))
    if tfl.get("latency_error"):
        lines.append(f"TFLite models could not be run: {tfl['latency_error']}")
    v = report.get("verification")
    if v:
        lines.append(f"SavedModel check (fresh process, no tf_lottery): max |diff| "
                     f"{v['max_abs_diff']:.2e} on {v['batch_size']} examples, "
                     f"{v['nonzeros']:,} non-zeros as expected")
    if report.get("speed_note"):
        lines.append("Speed: " + report["speed_note"])
    lines += table_lines(report)
    return "\n".join(lines)
