"""Plain SavedModels of sparse models, checked in a process that never imports tf_lottery.

``save`` writes a stripped (wrapper-free) tf_keras model as a SavedModel with a
``serving_default`` signature: named inputs (the model's input names) and a dict of
named outputs (the model's output names). It also holds the Keras metadata, so
``tf_keras.models.load_model`` opens it without tf_lottery as well.

``verify`` runs ``sys.executable -c`` on a short script that imports only numpy and
tensorflow, loads each SavedModel with ``tf.saved_model.load``, feeds a batch saved
to an .npz through ``serving_default`` and writes the outputs and the non-zero pattern
of every variable back; the comparison is made here, in the parent.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from tf_lottery._keras import tf

SIGNATURE_KEY = "serving_default"

# Runs in a fresh interpreter: numpy and tensorflow only (never tf_lottery).
CHILD_SCRIPT = r"""
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

request = json.load(open(sys.argv[1]))
report = []
for job in request["jobs"]:
    loaded = tf.saved_model.load(job["saved_model"])
    fn = loaded.signatures["serving_default"]
    data = np.load(job["inputs"])
    outputs = fn(**{k: tf.constant(data[k]) for k in data.files})
    variables = list(getattr(loaded, "variables", None) or fn.variables)
    arrays = {"out__" + k: v.numpy() for k, v in outputs.items()}
    counts = []
    for i, v in enumerate(variables):
        nonzero = v.numpy() != 0
        arrays["nz__%d" % i] = np.packbits(nonzero.ravel())
        counts.append(int(nonzero.sum()))
    np.savez(job["result"], **arrays)
    _, inputs = fn.structured_input_signature
    report.append({
        "saved_model": job["saved_model"],
        "signature_inputs": sorted(inputs),
        "signature_outputs": sorted(outputs),
        "variables": [{"name": v.name, "shape": [int(d) for d in v.shape], "nonzeros": c}
                      for v, c in zip(variables, counts)],
    })
report = {"jobs": report, "tf_lottery_imported": "tf_lottery" in sys.modules,
          "tensorflow": tf.__version__}
json.dump(report, open(request["report"], "w"))
"""


class VerificationError(RuntimeError):
    """The SavedModel, loaded without tf_lottery, differs from the model it came from."""


def _clean_name(name: str, fallback: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", name.split(":")[0])
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = fallback
    return name


def input_specs(model, sample=None, input_shape: Optional[Sequence[int]] = None
                ) -> List[tf.TensorSpec]:
    """TensorSpecs (batch dimension None) of the model's inputs, named after them.

    Taken from ``model.inputs``; for a model built without Input layers, from ``sample``
    or else ``input_shape`` (one input, without the batch dimension).
    """
    if getattr(model, "inputs", None):
        specs, used = [], set()
        for i, t in enumerate(model.inputs):
            name = _clean_name(getattr(t, "name", "") or "", f"input_{i}")
            while name in used:
                name += "_"
            used.add(name)
            shape = [None] + list(t.shape[1:])
            specs.append(tf.TensorSpec(shape, t.dtype, name=name))
        return specs
    if sample is not None:
        arrays = sample if isinstance(sample, (list, tuple)) else [sample]
        if isinstance(sample, Mapping):
            return [tf.TensorSpec([None] + list(np.shape(v)[1:]), tf.as_dtype(np.asarray(v).dtype),
                                  name=_clean_name(k, f"input_{i}"))
                    for i, (k, v) in enumerate(sample.items())]
        return [tf.TensorSpec([None] + list(np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype),
                              name=f"input_{i}") for i, a in enumerate(arrays)]
    if input_shape is not None:
        return [tf.TensorSpec([None] + [int(d) for d in input_shape], tf.float32, name="input_0")]
    raise ValueError(f"model {model.name!r} has no Input layers: pass sample= (a batch) or "
                     "input_shape= (without the batch dimension) to export it")


def output_names(model, count: int) -> List[str]:
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != count:
        names = [f"output_{i}" for i in range(count)]
    clean, used = [], set()
    for i, name in enumerate(names):
        name = _clean_name(name, f"output_{i}")
        while name in used:
            name += "_"
        used.add(name)
        clean.append(name)
    return clean


def make_sample(specs: Sequence[tf.TensorSpec], batch_size: int = 4, seed: int = 0
                ) -> Dict[str, np.ndarray]:
    """A random batch for ``specs``: normal floats; 0/1 integers (pass your own sample
    for models whose integer inputs mean something, e.g. token ids)."""
    rng = np.random.default_rng(seed)
    sample = {}
    for spec in specs:
        dims = list(spec.shape[1:])
        if any(d is None for d in dims):
            raise ValueError(f"input {spec.name!r} has an unknown dimension {spec.shape}: pass "
                             "sample= (a batch) to export this model")
        shape = [batch_size] + [int(d) for d in dims]
        dtype = spec.dtype.as_numpy_dtype
        if spec.dtype.is_floating:
            sample[spec.name] = rng.normal(size=shape).astype(dtype)
        elif spec.dtype.is_bool:
            sample[spec.name] = np.zeros(shape, dtype)
        else:
            sample[spec.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return sample


def normalize_sample(sample, specs: Sequence[tf.TensorSpec]) -> Dict[str, np.ndarray]:
    """``sample`` (array, list of arrays or dict) as {input name: array} in spec order."""
    if isinstance(sample, Mapping):
        if set(sample) == {s.name for s in specs}:
            values = [sample[s.name] for s in specs]
        elif len(sample) == len(specs):
            values = list(sample.values())
        else:
            raise ValueError(f"sample has keys {sorted(sample)}, the model's inputs are "
                             f"{[s.name for s in specs]}")
    elif isinstance(sample, (list, tuple)):
        values = list(sample)
    else:
        values = [sample]
    if len(values) != len(specs):
        raise ValueError(f"sample has {len(values)} arrays, the model has {len(specs)} inputs")
    return {s.name: np.asarray(v, dtype=s.dtype.as_numpy_dtype) for s, v in zip(specs, values)}


def model_inputs(sample: Mapping[str, np.ndarray]):
    """The sample as the model takes it: one array, or a list in input order."""
    values = [tf.constant(v) for v in sample.values()]
    return values[0] if len(values) == 1 else values


def flat_outputs(outputs) -> List[np.ndarray]:
    return [np.asarray(o) for o in tf.nest.flatten(outputs)]


def save(plain_model, directory: str, specs: Sequence[tf.TensorSpec]) -> List[str]:
    """Writes ``plain_model`` as a SavedModel with a ``serving_default`` signature.

    Returns the signature's output names, in the order of the model's flat outputs.
    """
    count = len(tf.nest.flatten(plain_model.outputs)) if getattr(plain_model, "outputs", None) \
        else len(tf.nest.flatten(plain_model(model_inputs(make_sample(specs, 1)))))
    names = output_names(plain_model, count)

    @tf.function(input_signature=list(specs))
    def serve(*args):
        inputs = args[0] if len(args) == 1 else list(args)
        outputs = tf.nest.flatten(plain_model(inputs, training=False))
        return dict(zip(names, outputs))

    plain_model.save(directory, save_format="tf", include_optimizer=False,
                     signatures={SIGNATURE_KEY: serve.get_concrete_function()})
    return names


def run_clean_process(jobs: Sequence[Mapping[str, object]], workdir: str,
                      timeout: float = 600) -> Dict[str, object]:
    """Runs ``CHILD_SCRIPT`` on ``jobs`` ({"saved_model", "sample": {name: array}}) in one
    fresh Python process; returns its report with, per job, "outputs" {name: array} and
    "nonzero_masks" [packed bits per variable]."""
    request = {"jobs": [], "report": os.path.join(workdir, "report.json")}
    for i, job in enumerate(jobs):
        inputs = os.path.join(workdir, f"inputs_{i}.npz")
        np.savez(inputs, **job["sample"])
        request["jobs"].append({"saved_model": str(job["saved_model"]), "inputs": inputs,
                                "result": os.path.join(workdir, f"result_{i}.npz")})
    request_path = os.path.join(workdir, "request.json")
    with open(request_path, "w", encoding="utf-8") as f:
        json.dump(request, f)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    proc = subprocess.run([sys.executable, "-c", CHILD_SCRIPT, request_path], env=env,
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise VerificationError("loading the SavedModel with plain TensorFlow in a fresh "
                                f"process failed (exit {proc.returncode}):\n"
                                + proc.stderr[-4000:])
    with open(request["report"], encoding="utf-8") as f:
        report = json.load(f)
    for job, entry in zip(request["jobs"], report["jobs"]):
        with np.load(job["result"]) as result:
            entry["outputs"] = {k[len("out__"):]: result[k] for k in result.files
                                if k.startswith("out__")}
            entry["nonzero_masks"] = [result[f"nz__{i}"] for i in range(len(entry["variables"]))]
    return report


def compare(child: Mapping[str, object], reference: Sequence[np.ndarray], names: Sequence[str],
            variables: Sequence, masks: Mapping[int, np.ndarray], atol: float
            ) -> Dict[str, object]:
    """Checks one job of ``run_clean_process`` against the parent's model.

    Args:
      child: the job's entry in the child's report.
      reference: the masked model's flat outputs on the same batch.
      names: the signature's output names, in flat-output order.
      variables: the stripped model's variables (the child's are in the same order).
      masks: index in ``variables`` -> the mask of that weight.
      atol: the largest allowed absolute output difference.

    Returns a summary; raises ``VerificationError`` when anything differs.
    """
    problems = []
    diffs = []
    for name, ref in zip(names, reference):
        if name not in child["outputs"]:
            problems.append(f"output {name!r} missing from serving_default")
            continue
        got = child["outputs"][name]
        if got.shape != ref.shape:
            problems.append(f"output {name!r} has shape {got.shape}, expected {ref.shape}")
            continue
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
                     if ref.size else 0.0)
    max_diff = max(diffs, default=0.0)
    if not max_diff <= atol:
        problems.append(f"outputs differ by up to {max_diff:.3g} (> {atol:g})")

    loaded = child["variables"]
    if len(loaded) != len(variables):
        problems.append(f"the SavedModel holds {len(loaded)} variables, the model "
                        f"{len(variables)}")
    expected_total = actual_total = 0
    for i, (var, entry) in enumerate(zip(variables, loaded)):
        value = var.numpy()
        if list(value.shape) != entry["shape"]:
            problems.append(f"variable {i} ({var.name}) has shape {entry['shape']} in the "
                            f"SavedModel, {list(value.shape)} in the model")
            continue
        expected = int(np.count_nonzero(value))
        expected_total += expected
        actual_total += entry["nonzeros"]
        if entry["nonzeros"] != expected:
            problems.append(f"{var.name}: {entry['nonzeros']} non-zeros in the SavedModel, "
                            f"{expected} in the model")
        if i in masks:
            nonzero = np.unpackbits(child["nonzero_masks"][i], count=value.size).astype(bool)
            outside = int(np.count_nonzero(nonzero & (masks[i].ravel() == 0)))
            if outside:
                problems.append(f"{var.name}: {outside} non-zeros where the mask is 0")
    if child.get("tf_lottery_imported"):
        problems.append("the checking process imported tf_lottery")
    if problems:
        raise VerificationError("the exported SavedModel does not match the model: "
                                + "; ".join(problems))
    return {"max_abs_diff": max_diff, "atol": atol, "nonzeros": actual_total,
            "nonzeros_expected": expected_total, "masked_weights_checked": len(masks),
            "variables": len(loaded)}


def verify(saved_model_dir: str, sample: Mapping[str, np.ndarray],
           reference: Sequence[np.ndarray], names: Sequence[str], variables: Sequence,
           masks: Mapping[int, np.ndarray], atol: float = 1e-5) -> Dict[str, object]:
    """Loads ``saved_model_dir`` in a fresh process without tf_lottery and compares (see
    ``compare``); returns the summary, with the batch size and the child's TF version."""
    with tempfile.TemporaryDirectory(prefix="tfl_verify_") as workdir:
        report = run_clean_process([{"saved_model": saved_model_dir, "sample": sample}], workdir)
    child = dict(report["jobs"][0])
    child["tf_lottery_imported"] = report["tf_lottery_imported"]
    summary = compare(child, reference, names, variables, masks, atol)
    summary.update({"batch_size": int(next(iter(sample.values())).shape[0]),
                    "process": "fresh python, numpy + tensorflow only",
                    "tf_lottery_imported": report["tf_lottery_imported"]})
    return summary
