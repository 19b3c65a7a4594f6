"""What sparsity buys at inference: dense vs compact vs condensed vs TFLite, batch 1 and 32.

    python benchmarks/sparse_inference.py [--rounds=25] [--cases=digits,mlp,mobilenet]
        [--mobilenet_size=224] [--output_dir=DIR] [--markdown]
        [--ticket_run=RUN_DIR [--ticket_level=N]]

Every case is exported four times with ``tfl.export`` (each SavedModel checked in a fresh
process without tf_lottery): plain (dense kernels holding zeros, plus dense and sparse
TFLite), ``compact=True``, and ``compact=True, condense=True`` tuned at batch 1 and at
batch 32. The SavedModels are loaded back with ``tf.saved_model.load`` and called through
``serving_default``; the TFLite models run in the LiteRT interpreter with 2 threads.
Latency is the median over ``--rounds`` rounds in which every variant is called once, in
a fresh random order each round, in one process, so machine noise hits them alike.
"condensed" at batch B is the export tuned at B.

Cases:
- digits: with ``--ticket_run``, the trained lottery ticket of an IMP run folder (e.g.
  ``tf-lottery train --gin_file=gin_configs/digits_lenet300100_imp.gin``; level 18 holds
  about 2% of the weights); without it, LeNet-300-100 on scikit-learn's digits (64 inputs)
  pruned by global magnitude in rounds (train, prune, fine-tune) to ~2% of the weights.
  Either way units lose all their inputs or outputs, so compaction removes them;
- mlp: 1024-4096-4096-4096-10 at 90% and 98%, ERK and constant fan-in (random masks:
  latency does not depend on the values);
- mobilenet: MobileNet-v1 at 90% ERK, depthwise convolutions dense.

"TFLite condensed" is the condensed SavedModel (tuned at that batch) converted to TFLite,
where it has condensed layers and the converter takes it (the gathers convert; a
sparse-dense matmul does not).

Prints, per case, the per-layer kernel choice of the batch-1 export and one table with
latency, speed-up against the dense SavedModel, file size and multiply-adds.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_lottery as tfl  # noqa: E402
from tf_lottery._keras import keras, tf  # noqa: E402
from tf_lottery.export import condensed, timing  # noqa: E402
from tf_lottery.export import tflite as tfl_tflite  # noqa: E402
from tf_lottery.masking import selection  # noqa: E402
from tf_lottery.training.datasets import load_digits_arrays  # noqa: E402

BATCHES = (1, 32)
THREADS = 2


# ----------------------------------------------------------------------------- cases

def digits_ticket(target=0.98, seed=0):
    """LeNet-300-100 on digits, global magnitude pruning in rounds to ``target``."""
    x_train, y_train, x_test, y_test = load_digits_arrays()
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,), name="pixels")
    x = keras.layers.Dense(300, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(100, activation="relu", name="fc2")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="lenet_digits")

    def fit(m, epochs):
        m.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
        m.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0)
        return m.evaluate(x_test, y_test, verbose=0)[1]

    dense_acc = fit(model, 30)
    sparse = None
    for level in (0.5, 0.75, 0.88, 0.94, 0.97, target):
        if sparse is None:
            sparse = tfl.sparsify(model, level, "global", mask_init="magnitude")
        else:
            weights, masks = tfl.get_weights(sparse), tfl.get_masks(sparse)
            tfl.set_masks(sparse, selection.global_magnitude_masks(weights, level, masks))
        acc = fit(sparse, 15)
    return sparse, {"dense_accuracy": dense_acc, "ticket_accuracy": acc,
                    "remaining": 1.0 - tfl.sparsity_report(sparse)[-1]["sparsity"]}


def imp_ticket(run_dir, level=None):
    """The trained ticket of an IMP run folder at ``level`` (default: the last finished)."""
    from tf_lottery.export.run_folder import load_run_model
    model, provenance = load_run_model(run_dir, level, "ticket")
    return model, {"ticket_accuracy": provenance.get("test_accuracy"),
                   "remaining": provenance.get("remaining"), "level": provenance.get("level"),
                   "run_dir": provenance.get("run_dir")}


def mlp(sparsity, structure, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1024,), name="features")
    x = inputs
    for i in range(3):
        x = keras.layers.Dense(4096, activation="relu", name=f"fc{i + 1}")(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="mlp4096")
    return tfl.sparsify(model, sparsity, "erk", seed=seed, structure=structure), {}


def mobilenet(size, seed=0):
    from tf_lottery.training.models import mobilenet_v1
    model = mobilenet_v1(input_shape=(size, size, 3), num_classes=1000, seed=seed)
    depthwise = [layer.name for layer in model.layers
                 if isinstance(layer, keras.layers.DepthwiseConv2D)]
    return tfl.sparsify(model, 0.9, "erk", seed=seed, dense_layers=depthwise), {}


# ----------------------------------------------------------------------------- timing

def _tflite_runner(content, batch, example):
    cls, _ = tfl_tflite.interpreter_class()
    interpreter = tfl_tflite._make_interpreter(cls, content, THREADS)  # the package's helper
    tfl_tflite._prepare(interpreter, example, np.random.default_rng(0))
    return interpreter.invoke


def _saved_model_runner(path, example):
    fn = tf.saved_model.load(path).signatures["serving_default"]
    feed = {k: tf.constant(v) for k, v in example.items()}

    def run():
        out = fn(**feed)
        for v in out.values():
            v.numpy()
    return run


def time_round_robin(runners, rounds, min_seconds=0.0):
    """Median ms per call of each runner (tf_lottery.export.timing.round_robin)."""
    return {n: 1e3 * t for n, t in timing.round_robin(runners, rounds, min_seconds,
                                                       warmup=2).items()}


# ----------------------------------------------------------------------------- one case

def run_case(name, sparse, meta, root, rounds, rounds_32):
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    common = dict(overwrite=True, verbose=False, latency_runs=10)
    start = time.time()
    reports = {
        "dense": tfl.export(sparse, os.path.join(folder, "dense"), num_threads=THREADS,
                            **common),
        "compact": tfl.export(sparse, os.path.join(folder, "compact"), compact=True,
                              num_threads=THREADS, tflite=bool(tfl.compact(
                                  sparse, return_report=True)[1]), **common),
    }
    for b in BATCHES:
        reports[f"condensed_b{b}"] = tfl.export(
            sparse, os.path.join(folder, f"condensed_b{b}"), tflite=False, compact=True,
            condense=True, batch_size=b, **common)
    export_s = time.time() - start
    shapes = {t.name.split(":")[0]: [int(d) for d in t.shape[1:]] for t in sparse.inputs}
    input_names = reports["dense"]["signature"]["inputs"]
    shapes = dict(zip(input_names, shapes.values()))

    latency, tflite_condensed_bytes = {}, {}
    for b in BATCHES:
        rng = np.random.default_rng(b)
        example = {n: rng.normal(size=[b] + s).astype(np.float32) for n, s in shapes.items()}
        runners = {
            "dense SavedModel": _saved_model_runner(os.path.join(folder, "dense", "saved_model"),
                                                    example),
            "compact": _saved_model_runner(os.path.join(folder, "compact", "saved_model"),
                                           example),
            "condensed": _saved_model_runner(
                os.path.join(folder, f"condensed_b{b}", "saved_model"), example),
        }
        for label, export_dir, kind in (("TFLite dense", "dense", "dense"),
                                        ("TFLite sparse", "dense", "sparse"),
                                        ("TFLite compact sparse", "compact", "sparse")):
            path = os.path.join(folder, export_dir, f"model_{kind}.tflite")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    runners[label] = _tflite_runner(f.read(), b, example)
        if any(r["path"] != "dense" for r in reports[f"condensed_b{b}"]["condensed"]["layers"]):
            content = condensed.convert_tflite(
                os.path.join(folder, f"condensed_b{b}", "saved_model"), {})
            if content is not None:
                runners["TFLite condensed"] = _tflite_runner(content, b, example)
                tflite_condensed_bytes.setdefault(b, len(content))
        latency[b] = time_round_robin(runners, rounds if b == 1 else rounds_32)

    flops = reports["dense"]["flops"]
    compact_flops = reports["compact"]["flops"]
    cond = reports["condensed_b1"]["condensed"]["layers"]
    files = reports["dense"]["files"]
    sizes = {"dense SavedModel": files["saved_model"]["bytes"],
             "compact": reports["compact"]["files"]["saved_model"]["bytes"],
             "condensed": reports["condensed_b1"]["files"]["saved_model"]["bytes"]}
    for kind in ("dense", "sparse"):
        if f"model_{kind}.tflite" in files:
            sizes[f"TFLite {kind}"] = files[f"model_{kind}.tflite"]["bytes"]
    if "model_sparse.tflite" in reports["compact"]["files"]:
        sizes["TFLite compact sparse"] = reports["compact"]["files"]["model_sparse.tflite"]["bytes"]
    if tflite_condensed_bytes:
        sizes["TFLite condensed"] = tflite_condensed_bytes.get(1, tflite_condensed_bytes.get(32))
    madds = {"dense SavedModel": flops["dense"], "compact": compact_flops["dense"],
             "condensed": _condensed_madds(reports["condensed_b1"]),
             "TFLite dense": flops["dense"], "TFLite sparse": flops["dense"],
             "TFLite compact sparse": compact_flops["dense"],
             "TFLite condensed": _condensed_madds(reports["condensed_b1"])}
    result = {"case": name, "meta": meta, "export_seconds": export_s, "latency_ms": latency,
              "sizes": sizes, "madds": madds, "flops_nonzero": flops["sparse"],
              "layers_b1": cond,
              "layers_b32": reports["condensed_b32"]["condensed"]["layers"],
              "compact": reports["compact"]["compact"],
              "graph_latency": {b: reports[f"condensed_b{b}"]["saved_model_latency"]
                                for b in BATCHES}}
    _print_case(result)
    return result


def _condensed_madds(report):
    """Multiply-adds the condensed export runs: non-zeros for condensed layers, all
    entries for the layers left dense."""
    paths = {r["layer"]: r["path"] for r in report["condensed"]["layers"]}
    total = 0
    for row in report["flops"]["layers"]:
        total += row["sparse"] if paths.get(row["layer"], "dense") != "dense" else row["dense"]
    return total


def _human(n):
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}"


def _print_case(r):
    print(f"\n=== {r['case']} {json.dumps(r['meta']) if r['meta'] else ''} "
          f"(exports {r['export_seconds']:.0f} s) ===")
    comp = r["compact"]
    removed = ", ".join(f"{x['layer']} {x['before']}->{x['after']}" for x in comp["layers"])
    print(f"compact: units removed: {removed or 'none'}")
    for b in BATCHES:
        rows = r[f"layers_b{b}"]
        chosen = ", ".join(f"{x['layer']}={x['path']}"
                           + (f" {x['speedup']:.2f}x" if x.get("speedup") else "")
                           for x in rows)
        print(f"kernels tuned at batch {b}: {chosen}")
    print(table([r]))


def table(results, markdown=False):
    head = ["case", "variant", "batch 1 ms", "speed-up", "batch 32 ms", "speed-up",
            "size", "mult-adds"]
    lines = []
    for r in results:
        lat = {int(k): v for k, v in r["latency_ms"].items()}
        d1, d32 = lat[1]["dense SavedModel"], lat[32]["dense SavedModel"]
        for variant in dict.fromkeys(list(lat[1]) + list(lat[32])):
            t1, t32 = lat[1].get(variant), lat[32].get(variant)
            lines.append([r["case"], variant, f"{t1:.3f}" if t1 else "-",
                          f"{d1 / t1:.2f}x" if t1 else "-", f"{t32:.3f}" if t32 else "-",
                          f"{d32 / t32:.2f}x" if t32 else "-",
                          _human(r["sizes"].get(variant, 0)) + "B",
                          _human(r["madds"].get(variant, 0))])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(row) + " |" for row in lines]
        return "\n".join(out)
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(head), "-" * len(fmt(head))] + [fmt(x) for x in lines])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25, help="timed rounds at batch 1")
    parser.add_argument("--rounds_32", type=int, default=11, help="timed rounds at batch 32")
    parser.add_argument("--cases", default="digits,mlp,mobilenet")
    parser.add_argument("--mobilenet_size", type=int, default=224)
    parser.add_argument("--output_dir", default=None, help="keep the exports and results")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--ticket_run", default=None,
                        help="an IMP run folder (e.g. of gin_configs/digits_lenet300100_imp.gin): "
                             "the digits case uses its ticket instead of a quick magnitude-pruned "
                             "network")
    parser.add_argument("--ticket_level", type=int, default=None,
                        help="the level of --ticket_run (default: the last finished one)")
    args = parser.parse_args()
    cases = args.cases.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="tfl_sparse_inference_") as tmp:
        root = args.output_dir or tmp
        if "digits" in cases:
            if args.ticket_run:
                model, meta = imp_ticket(args.ticket_run, args.ticket_level)
                name = f"digits IMP ticket {meta['remaining']:.1%}"
            else:
                model, meta = digits_ticket()
                name = f"digits magnitude {meta['remaining']:.1%}"
            results.append(run_case(name, model, meta, root, args.rounds, args.rounds_32))
        if "mlp" in cases:
            for sparsity in (0.9, 0.98):
                for structure, label in (("unstructured", "ERK"), ("constant_fan_in", "CFI")):
                    model, meta = mlp(sparsity, structure)
                    name = f"MLP-4096 {sparsity:.0%} {label}"
                    results.append(run_case(name, model, meta, root, args.rounds,
                                            args.rounds_32))
                    del model
        if "mobilenet" in cases:
            model, meta = mobilenet(args.mobilenet_size)
            results.append(run_case(f"MobileNet-v1 {args.mobilenet_size} 90% ERK", model,
                                    meta, root, args.rounds, max(3, args.rounds_32 // 2)))
        print("\n=== summary: latency (median ms), speed-up vs the dense SavedModel ===")
        print(table(results))
        if args.markdown:
            print()
            print(table(results, markdown=True))
        if args.output_dir:
            with open(os.path.join(args.output_dir, "sparse_inference.json"), "w") as f:
                json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
