"""Export sparse models as plain TensorFlow artefacts, and measure what sparsity buys.

``export(model, path)`` strips the MaskedLayers and writes, into a new folder ``path``::

    saved_model/          SavedModel, signature "serving_default" (loads without tf_lottery)
    model_dense.tflite    float TFLite model
    model_sparse.tflite   the same, weights in TFLite's sparse format (EXPERIMENTAL_SPARSITY)
    model_condensed.tflite  with condense=: the condensed SavedModel, if the converter takes it
    sparsity.json         per-weight sparsity and the masks' provenance
    export_report.json    parameters, non-zeros, file sizes (and gzip), FLOPs, TFLite latency

``path`` may be local or on any ``tf.io.gfile`` filesystem (``gs://bucket/export``).
Before returning it loads the SavedModel with plain ``tf.saved_model.load`` in a fresh
process that never imports tf_lottery and checks that it gives the masked model's
outputs (max abs difference <= ``atol``) and holds exactly the model's non-zeros,
none outside the masks. Everything is written into a temporary folder beside ``path``
and renamed into place at the end, so ``path`` is either complete or absent.

Where sparsity gives speed: ``compact=True`` removes the units the masks disconnected
(``tf_lottery.export.compact``); ``condense=True`` runs each sparse Dense / 1x1
convolution on a condensed or sparse kernel where that measured faster than dense at
``batch_size`` (``tf_lottery.export.condensed``); TFLite's sparse kernels (XNNPACK)
cover 1x1 convolutions of MobileNet-like CNNs on ARM only (``tf_lottery.export.tflite``).

Import the submodules with ``from tf_lottery.export import tflite`` (``tfl.export`` is
the function).
"""
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from tf_lottery import _io
from tf_lottery._io import honour_umask, move_aside
from tf_lottery._keras import keras, tf
from tf_lottery.export import compact as _compact
from tf_lottery.export import condensed as _condensed
from tf_lottery.export import report as _report
from tf_lottery.export import saved_model as _saved_model
from tf_lottery.export import tflite as _tflite
from tf_lottery.export.saved_model import VerificationError
from tf_lottery.masking.api import masked_layers, sparsity_report, strip

SAVED_MODEL_DIR = "saved_model"
DENSE_TFLITE = "model_dense.tflite"
SPARSE_TFLITE = "model_sparse.tflite"
CONDENSED_TFLITE = "model_condensed.tflite"
SPARSITY_JSON = "sparsity.json"
REPORT_JSON = "export_report.json"


class ExportReport(dict):
    """The content of ``export_report.json``; ``str()`` / ``table()`` give the printed table."""

    def table(self) -> str:
        return _report.table(self)

    def __str__(self) -> str:
        return self.table()


def _gin_config() -> Optional[str]:
    gin = sys.modules.get("gin")
    if gin is None:
        return None
    for getter in ("operative_config_str", "config_str"):
        try:
            text = getattr(gin, getter)()
        except Exception:  # gin raises if nothing is parsed / bound
            continue
        if text and text.strip():
            return text
    return None


def _provenance(provenance: Optional[Mapping[str, object]], measured: Optional[float]) -> Dict:
    result = {"method": None, "level": None, "gin_config": None}
    result.update(dict(provenance or {}))
    if result.get("gin_config") is None:
        result["gin_config"] = _gin_config()
    result["measured_sparsity"] = measured
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_json(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(data), f, indent=2)
        f.write("\n")


_EXPORT_ENTRIES = {SAVED_MODEL_DIR, DENSE_TFLITE, SPARSE_TFLITE, CONDENSED_TFLITE, SPARSITY_JSON,
                   REPORT_JSON}


def _is_export(path: str) -> bool:
    """Whether ``path`` (local or ``tf.io.gfile``) is a folder ``export`` wrote (nothing else
    in it)."""
    gfile = _io.gfile
    if _io.is_local(path) and os.path.islink(path):
        return False
    return (gfile.isdir(path) and gfile.exists(os.path.join(path, REPORT_JSON))
            and {name.rstrip("/") for name in gfile.listdir(path)} <= _EXPORT_ENTRIES)


def _move_into_place(tmp: str, path: str, overwrite: bool) -> None:
    """Renames ``tmp`` to ``path``. An export already at ``path`` (``overwrite``) is
    replaced; anything else there is moved aside to ``path.old-<time>``, never deleted."""
    honour_umask(tmp)
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    if not overwrite:
        raise FileExistsError(f"{path} appeared while exporting; pass overwrite=True to "
                              "replace it")
    ours = _is_export(path)
    old = move_aside(path)
    os.replace(tmp, path)
    if ours:
        shutil.rmtree(old, ignore_errors=True)
    else:
        warnings.warn(f"{path} held something other than an export: moved it aside to {old}",
                      UserWarning, stacklevel=3)


def _mask_index(plain_model, model) -> Dict[int, np.ndarray]:
    """Index in ``plain_model.variables`` -> mask, for every masked weight."""
    by_id, by_name = {}, {}
    for layer in masked_layers(model):
        for weight, mask in layer.masked_weights:
            by_id[id(weight)] = mask.numpy()
            by_name[weight.name] = mask.numpy()
    index = {}
    for i, var in enumerate(plain_model.variables):
        if id(var) in by_id:
            index[i] = by_id[id(var)]
        elif var.name in by_name and tuple(var.shape) == by_name[var.name].shape:
            index[i] = by_name[var.name]
    return index


def _report_rows(report, model):
    """``(per-layer rows, total row or None)`` of ``report(model)`` (a sparsity report)."""
    try:
        rows = report(model)
    except ValueError:  # no prunable layer at all
        rows = []
    return list(rows[:-1]), (dict(rows[-1]) if rows else None)


def _staging(path: str) -> str:
    """A new hidden folder beside ``path`` where an export is written before it is moved
    into place (one rename: a reader never sees half an export)."""
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)


def export(model, path, overwrite: bool = False, sample=None,
           provenance: Optional[Mapping[str, object]] = None, tflite: bool = True, *,
           input_shape: Optional[Sequence[int]] = None, verify: bool = True,
           atol: float = 1e-5, latency_runs: int = 50, num_threads: int = 1,
           verbose: bool = True, compact: bool = False, condense=False,
           batch_size: int = 1) -> ExportReport:
    """Writes ``model`` (sparsified or plain) as a plain SavedModel, TFLite models and reports.

    A Keras 3 model goes through Keras 3's own ``model.export`` (TensorFlow and JAX
    backends; ``tf_lottery.export.keras3``) with the same checks and report.

    Args:
      model: a built tf_keras or Keras 3 model, usually from ``tfl.sparsify`` (Sequential or
        functional when it has MaskedLayers, since they are stripped). A model without
        masks is exported dense with a warning.
      path: the folder to create; must not exist unless ``overwrite``.
      overwrite: replace an existing ``path``: an earlier export there is replaced, a
        file or folder holding anything else is moved aside to ``path.old-<time>``.
      sample: a batch (array, list of arrays, or {input name: array}) for the check;
        default: 4 random examples (floats ~ N(0, 1); integer inputs 0/1, so pass a
        real batch for token ids).
      provenance: how the masks were made, saved in ``sparsity.json``: e.g.
        {"method": "rigl", "level": 0.9, "gin_config": "..."} (any JSON-able extra keys
        are kept). gin_config defaults to gin's operative config if gin is in use.
      tflite: also convert to dense and sparse TFLite and measure their latency. If the
        converter fails (an op TFLite lacks), the SavedModel is still written and the
        report says why TFLite failed.
      input_shape: input shape without the batch dimension, for a model built without
        Input layers (or pass ``sample``).
      verify: check the SavedModel in a fresh process without tf_lottery (see module doc);
        raises ``VerificationError`` (and writes nothing) when it differs.
      atol: largest allowed absolute output difference in the check.
      latency_runs, num_threads: TFLite latency = median of ``latency_runs`` invocations
        per model, interleaved, with this many interpreter threads.
      verbose: print the report table.
      compact: remove the units the masks disconnected first (``tfl.compact``); the
        report lists the units removed per layer.
      condense: run each sparse Dense / 1x1 convolution as a condensed gather or a
        sparse-dense matmul where that measured faster than dense at ``batch_size``
        (per-layer fallback to dense; ``tf_lottery.export.condensed``). The SavedModel
        then holds ``indices``/``values`` instead of those kernels, loads with plain
        ``tf.saved_model.load`` (not ``tf_keras.models.load_model``), and the report gives
        each layer's path and speed-up and the whole graph's latency against dense. The
        TFLite files are converted from the model before condensing (and the condensed
        SavedModel to ``model_condensed.tflite`` if the converter takes it). A path name
        (``"gather"``, ``"gather_t"``, ``"gather_loop"``, ``"sparse_matmul"``) forces it on
        every eligible layer at least 50% sparse, without timing.
      batch_size: the batch size the kernels are chosen for.

    Returns:
      The report (an ``ExportReport`` dict, also saved as ``export_report.json``).
    """
    from tf_lottery.dispatch import is_keras3
    keras3 = is_keras3(model)
    if not keras3 and not isinstance(model, keras.Model):
        raise TypeError(f"expected a tf_keras or Keras 3 Model, got {type(model).__name__}")
    if not _io.is_local(os.fspath(path)):
        return _export_remote(model, os.fspath(path), overwrite, verbose,
                              dict(sample=sample, provenance=provenance, tflite=tflite,
                                   input_shape=input_shape, verify=verify, atol=atol,
                                   latency_runs=latency_runs, num_threads=num_threads,
                                   compact=compact, condense=condense,
                                   batch_size=batch_size))
    if keras3:
        from tf_lottery.export import keras3 as _keras3
        return _keras3.export(model, path, overwrite, sample, provenance, tflite,
                              input_shape=input_shape, verify=verify, atol=atol,
                              latency_runs=latency_runs, num_threads=num_threads,
                              verbose=verbose, compact=compact, condense=condense,
                              batch_size=batch_size)
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to "
                              "replace it")
    masked = bool(masked_layers(model))
    if not masked:
        warnings.warn(f"model {model.name!r} has no masks (no MaskedLayer): exporting it "
                      "dense; sparsity.json reports the zeros it has", UserWarning,
                      stacklevel=2)

    specs = _saved_model.input_specs(model, sample, input_shape)
    batch = (_saved_model.normalize_sample(sample, specs) if sample is not None
             else _saved_model.make_sample(specs))
    reference = _saved_model.flat_outputs(model(_saved_model.model_inputs(batch),
                                                training=False))
    plain = strip(model) if masked else model
    dense_plain, compact_info, condensed_info = plain, None, None
    if compact:
        plain, removed = _compact.compact(plain, return_report=True)
        compact_info = {"layers": list(removed), "params_before": removed.params_before,
                        "params_after": removed.params_after}
    tflite_model = plain
    whole_model = {}
    if condense:
        plain, paths = _condensed.condense(
            plain, batch_size=batch_size, force=condense if isinstance(condense, str) else None,
            timings=whole_model)
        condensed_info = {"batch_size": int(batch_size), "layers": paths}
    mask_index = _mask_index(plain, model) if masked else {}
    layers, total = _report_rows(sparsity_report, model)
    tmp = _staging(path)
    try:
        sm_dir = os.path.join(tmp, SAVED_MODEL_DIR)
        names = _saved_model.save(plain, sm_dir, specs)
        verification = None
        if verify:
            verification = _saved_model.verify(sm_dir, batch, reference, names,
                                               plain.variables, mask_index, atol)

        files = {SAVED_MODEL_DIR: _report.file_sizes(sm_dir)}
        tflite_info = {"enabled": bool(tflite), "error": None}
        latency, analysis = None, None
        if tflite:
            tflite_dir = sm_dir
            if tflite_model is not plain:  # converted before condensing; not kept
                tflite_dir = os.path.join(tmp, ".tflite_source")
                _saved_model.save(tflite_model, tflite_dir, specs)
            converted = _tflite.convert_both(tflite_dir)
            if tflite_dir != sm_dir:
                shutil.rmtree(tflite_dir)
                converted["condensed"] = _condensed.convert_tflite(sm_dir, tflite_info)
            latency, analysis = _tflite.write_and_time(
                converted, tmp, {"dense": DENSE_TFLITE, "sparse": SPARSE_TFLITE,
                                 "condensed": CONDENSED_TFLITE},
                files, tflite_info, example=batch, reference=dict(zip(names, reference)),
                runs=latency_runs, num_threads=num_threads)
            tflite_info["sparse_encoding"] = analysis

        flops = _report.flops(tflite_model)
        graph_latency = None
        if compact or condense:
            runs = latency_runs
            if not compact and plain is not dense_plain and whole_model:
                # condense timed this very pair while choosing: not timed a second time
                runs = whole_model["rounds"]
                ms = {"dense": whole_model["dense"], "exported": whole_model["condensed"]}
            else:
                example = _saved_model.model_inputs(
                    _saved_model.make_sample(specs, batch_size, seed=1))
                ms = _condensed.model_latency({"dense": dense_plain, "exported": plain},
                                              example, rounds=latency_runs)
            graph_latency = {"batch_size": int(batch_size), "runs": runs,
                             "median_ms": ms, "speedup": ms["dense"] / ms["exported"]}
        size_ratio = {}
        if DENSE_TFLITE in files and SPARSE_TFLITE in files:
            d, s = files[DENSE_TFLITE], files[SPARSE_TFLITE]
            size_ratio = {"tflite": d["bytes"] / s["bytes"],
                          "tflite_gzip": d["gzip_bytes"] / s["gzip_bytes"]}
        note = (_tflite.speed_note(analysis, latency["speedup"] if latency else None)
                if tflite and not tflite_info["error"] else "")
        sparsity = {
            "format": "tf-lottery sparsity v1",
            "model": model.name,
            "masked": masked,
            "sparsity": total["sparsity"] if total else 0.0,
            "provenance": _provenance(provenance, total["sparsity"] if total else None),
            "layers": layers,
            "total": total,
            "versions": {"tf_lottery": _version(), "tensorflow": tf.__version__},
        }
        result = ExportReport({
            "path": path,
            "model": model.name,
            "masked": masked,
            "parameters": _report.parameter_counts(tflite_model),
            "prunable": total,
            "flops": flops,
            "files": files,
            "gzip_level": _report.GZIP_LEVEL,
            "size_ratio": size_ratio,
            "latency": latency,
            "tflite": tflite_info,
            "verification": verification,
            "compact": compact_info,
            "condensed": condensed_info,
            "saved_model_latency": graph_latency,
            "speed_note": note,
            "host": {"machine": platform.machine(), "processor": platform.processor(),
                     "xnnpack_sparse_kernels": _tflite.host_allows_xnnpack_sparse()},
            "signature": {"key": _saved_model.SIGNATURE_KEY,
                          "inputs": [s.name for s in specs], "outputs": names},
        })
        _write_json(os.path.join(tmp, SPARSITY_JSON), sparsity)
        _write_json(os.path.join(tmp, REPORT_JSON), result)
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = ExportReport(_jsonable(dict(result)))
    if verbose:
        print(result.table())
    return result


def _export_remote(model, path: str, overwrite: bool, verbose: bool, options) -> ExportReport:
    """``export`` to a ``tf.io.gfile`` folder (``gs://...``): built and verified in a local
    temporary folder, then uploaded file by file with ``export_report.json`` last (object
    stores cannot rename a folder atomically: the export is complete once it exists)."""
    if _io.gfile.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if _io.gfile.exists(path) and not _is_export(path):
        raise FileExistsError(f"{path} holds files tf-lottery did not write, and an object "
                              "store cannot move a folder aside; export to another path")
    with tempfile.TemporaryDirectory(prefix="tf_lottery_export_") as local_dir:
        local = os.path.join(local_dir, "export")
        result = export(model, local, verbose=False, **options)
        result["path"] = path
        _write_json(os.path.join(local, REPORT_JSON), result)
        if _io.gfile.exists(path):  # replaced only once the new export is complete
            _io.gfile.rmtree(path)
        _io.upload_tree(local, path, last=(REPORT_JSON,))
    result = ExportReport(_jsonable(dict(result)))
    if verbose:
        print(result.table())
    return result


def _version() -> str:
    try:
        from tf_lottery import __version__
        return __version__
    except ImportError:  # pragma: no cover - during tf_lottery's own import
        return "unknown"


__all__ = ["export", "ExportReport", "VerificationError"]

# tf_lottery/__init__.py binds ``tfl.export`` to the function above, which hides this
# subpackage as an attribute of tf_lottery; ``import tf_lottery.export.tflite as m``
# looks the submodules up through that attribute, so the function carries them too.
export.saved_model, export.tflite, export.report = _saved_model, _tflite, _report
export.compact, export.condensed = _compact, _condensed
