"""``tfl.export`` for Keras 3 models: Keras 3's own ``model.export`` and the same checks.

The masked model is stripped (``tfl.strip``) and written with ``model.export(...,
format="tf_saved_model")`` (on JAX Keras converts the model with jax2tf). The SavedModel
is then loaded with plain ``tf.saved_model.load`` in a fresh process that never imports
tf_lottery (``saved_model.verify``: outputs equal within ``atol``, exactly the model's
non-zeros, none outside the masks), and ``sparsity.json`` / ``export_report.json`` are
written as for tf_keras models. LiteRT (TFLite) files are converted from that SavedModel
on the TensorFlow backend; Keras 3.15 exports LiteRT only from the TensorFlow (or PyTorch,
with litert_torch) backend, so on JAX the report says so and how to get them. On PyTorch,
Keras 3.15's SavedModel export fails (torch.export rejects the dynamic batch dimension Keras
passes, for plain models too): a one-line error says to export from TensorFlow or JAX.
"""
import os
import platform
import shutil
import sys
import warnings

import numpy as np

from tf_lottery.export import report as _report
from tf_lottery.export import saved_model as _saved_model
from tf_lottery.export import tflite as _tflite

LITERT_BACKENDS = ("tensorflow",)
SAVED_MODEL_BACKENDS = ("tensorflow", "jax")  # checked here; PyTorch fails in Keras 3.15


class BackendExportError(RuntimeError, ValueError):
    """This Keras backend cannot write a SavedModel (the fix, another backend, is the
    user's: ``tf-lottery export`` prints it as a one-line error)."""


def _specs(model, sample, input_shape):
    import keras
    import tensorflow as tf

    if not getattr(model, "inputs", None):
        return _saved_model.input_specs(model, sample, input_shape)
    return [tf.TensorSpec([None] + list(t.shape[1:]), tf.as_dtype(keras.backend.standardize_dtype(
        t.dtype)), name=_saved_model._clean_name(t.name, f"input_{i}"))
        for i, t in enumerate(model.inputs)]


def _inputs(model, batch):
    """The batch as the Keras 3 model takes it: one array, a list, or a dict."""
    values = list(batch.values())
    if isinstance(getattr(model, "_inputs_struct", None), dict):
        return dict(zip([t.name for t in model.inputs], values))
    return values[0] if len(values) == 1 else values


def _flat(outputs):
    import keras
    return [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def _mask_index(plain, model):
    """Index in ``plain.variables`` -> mask, for every masked weight (shared variables)."""
    from tf_lottery.keras3 import api
    from tf_lottery.keras3.wrapper import mask_array
    by_id = {id(w): mask_array(m)
             for layer in api.masked_layers(model) for w, m in layer.masked_weights}
    return {i: by_id[id(v)] for i, v in enumerate(plain.variables) if id(v) in by_id}


def _output_names(sm_dir, count):
    """The serving signature's output names in the model's flat output order: Keras names
    them ``output_<i>``, or by key for a dict of outputs (flattened in sorted key order)."""
    import tensorflow as tf
    signature = tf.saved_model.load(sm_dir).signatures[_saved_model.SIGNATURE_KEY]
    keys = sorted(signature.structured_outputs)
    indexed = [f"output_{i}" for i in range(count)]
    if set(keys) == set(indexed):
        return indexed
    if len(keys) != count:
        raise _saved_model.VerificationError(
            f"the SavedModel's signature has outputs {keys}, the model {count} outputs")
    return keys


def litert_unavailable(backend: str):
    """Why LiteRT files cannot be written on ``backend`` (None when they can)."""
    if backend in LITERT_BACKENDS:
        return None
    return (f"Keras 3 exports LiteRT only from the TensorFlow backend, not {backend}: "
            "export again with KERAS_BACKEND=tensorflow (tf-lottery export --run_dir, or "
            "--checkpoint of the model saved with model.save('m.keras')), or pass tflite=False "
            "(--notflite)")


def export(model, path, overwrite=False, sample=None, provenance=None, tflite=True, *,
           input_shape=None, verify=True, atol=1e-5, latency_runs=50, num_threads=1,
           verbose=True, compact=False, condense=False, batch_size=1):
    """``tf_lottery.export.export`` for a Keras 3 model (same arguments, files, report);
    ``compact`` and ``condense`` are tf_keras only."""
    import keras
    import tensorflow as tf

    from tf_lottery.keras3 import api

    if compact or condense:
        raise ValueError("compact= and condense= rebuild tf_keras layers and are not "
                         "available for Keras 3 models yet; export without them")
    package = sys.modules["tf_lottery.export"]  # its file names and writers (tfl.export
    # is the function, so the package module is looked up by name)
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to "
                              "replace it")
    backend = keras.config.backend()
    masked = bool(api.masked_layers(model))
    if not masked:
        warnings.warn(f"model {model.name!r} has no masks (no MaskedLayer): exporting it "
                      "dense; sparsity.json reports the zeros it has", UserWarning,
                      stacklevel=3)
    specs = _specs(model, sample, input_shape)
    batch = (_saved_model.normalize_sample(sample, specs) if sample is not None
             else _saved_model.make_sample(specs))
    reference = _flat(model(_inputs(model, batch), training=False))
    plain = api.strip(model) if masked else model
    mask_index = _mask_index(plain, model) if masked else {}
    layers, total = package._report_rows(api.sparsity_report, model)
    tmp = package._staging(path)
    try:
        sm_dir = os.path.join(tmp, package.SAVED_MODEL_DIR)
        try:
            plain.export(sm_dir, format="tf_saved_model", verbose=False)
        except Exception as error:
            if backend in SAVED_MODEL_BACKENDS:
                raise
            raise BackendExportError(
                f"Keras {keras.__version__} could not write a SavedModel on the {backend} "
                f"backend ({type(error).__name__}; it fails for plain models too): save the "
                "model (model.save('m.keras')) and export it with KERAS_BACKEND=tensorflow "
                "or jax") from error
        names = _output_names(sm_dir, len(reference))
        verification = None
        if verify:
            verification = _saved_model.verify(sm_dir, batch, reference, names,
                                               plain.variables, mask_index, atol)
        files = {package.SAVED_MODEL_DIR: _report.file_sizes(sm_dir)}
        tflite_info = {"enabled": bool(tflite), "error": None, "backend": backend}
        latency, analysis = None, None
        reason = litert_unavailable(backend) if tflite else None
        if reason:
            tflite_info["error"] = reason
            warnings.warn(f"no LiteRT files: {reason}", UserWarning, stacklevel=3)
        elif tflite:
            converted = _tflite.convert_both(sm_dir)
            latency, analysis = _tflite.write_and_time(
                converted, tmp, {"dense": package.DENSE_TFLITE, "sparse": package.SPARSE_TFLITE},
                files, tflite_info, example=batch, reference=dict(zip(names, reference)),
                runs=latency_runs, num_threads=num_threads, stacklevel=4)
            tflite_info["sparse_encoding"] = analysis
        size_ratio = {}
        if package.DENSE_TFLITE in files and package.SPARSE_TFLITE in files:
            d, s = files[package.DENSE_TFLITE], files[package.SPARSE_TFLITE]
            size_ratio = {"tflite": d["bytes"] / s["bytes"],
                          "tflite_gzip": d["gzip_bytes"] / s["gzip_bytes"]}
        note = (_tflite.speed_note(analysis, latency["speedup"] if latency else None)
                if tflite and not tflite_info["error"] else "")
        versions = {"tf_lottery": package._version(), "tensorflow": tf.__version__,
                    "keras": keras.__version__, "keras_backend": backend}
        sparsity = {
            "format": "tf-lottery sparsity v1", "model": model.name, "masked": masked,
            "sparsity": total["sparsity"] if total else 0.0,
            "provenance": package._provenance(provenance, total["sparsity"] if total else None),
            "layers": layers, "total": total, "versions": versions,
        }
        result = package.ExportReport({
            "path": path, "model": model.name, "masked": masked,
            "keras": {"version": keras.__version__, "backend": backend,
                      "exporter": "keras model.export(format='tf_saved_model')"},
            "parameters": _report.parameter_counts(plain),
            "prunable": total,
            "flops": _report.flops(plain, _report.keras3_calls(plain), keras.layers),
            "files": files, "gzip_level": _report.GZIP_LEVEL, "size_ratio": size_ratio,
            "latency": latency, "tflite": tflite_info, "verification": verification,
            "compact": None, "condensed": None, "saved_model_latency": None,
            "speed_note": note,
            "host": {"machine": platform.machine(), "processor": platform.processor(),
                     "xnnpack_sparse_kernels": _tflite.host_allows_xnnpack_sparse()},
            "signature": {"key": _saved_model.SIGNATURE_KEY,
                          "inputs": [s.name for s in specs], "outputs": names},
        })
        package._write_json(os.path.join(tmp, package.SPARSITY_JSON), sparsity)
        package._write_json(os.path.join(tmp, package.REPORT_JSON), result)
        package._move_into_place(tmp, path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = package.ExportReport(package._jsonable(dict(result)))
    if verbose:
        print(result.table())
    return result
