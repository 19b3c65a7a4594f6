"""What 90% sparsity buys after export: TFLite latency and file size, dense vs sparse.

    python benchmarks/export_speed.py [--runs=30] [--threads=1] [--output_dir=DIR]

Two models, each sparsified at 90% (ERK, random masks: latency and size do not depend
on training) and exported with ``tf_lottery.export``, which converts a dense and a
sparse (``EXPERIMENTAL_SPARSITY``) TFLite model and times both with the LiteRT
interpreter in one process, round-robin, median of ``--runs`` invocations:

- MobileNet-v1 (224x224x3, 1000 classes): the case XNNPACK's sparse kernels are built
  for (1x1 convolutions, Fast Sparse ConvNets). DepthwiseConv2D stays dense (listed in
  ``dense_layers``: tfmot cannot prune it), as in the Fast Sparse ConvNets models.
- an MLP 1024-2048-2048-1000: the case where sparsity should not give speed
  (FULLY_CONNECTED weights are densified when the interpreter is prepared).

Prints each export's table, then one summary line per model with the dense/sparse
ratios of latency, TFLite size (raw and gzip) and FLOPs.
"""
import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_lottery as tfl  # noqa: E402
from tf_lottery._keras import keras, tf  # noqa: E402
from tf_lottery.export import export  # noqa: E402


def mobilenet_v1():
    try:
        from tf_lottery.training.models import mobilenet_v1 as build
        return build(input_shape=(224, 224, 3), num_classes=1000, seed=0), \
            "tf_lottery.training.models.mobilenet_v1"
    except ImportError:
        return keras.applications.MobileNet(weights=None), "tf_keras.applications.MobileNet"


def mlp():
    inputs = keras.Input((1024,), name="features")
    x = keras.layers.Dense(2048, activation="relu", name="fc1")(inputs)
    x = keras.layers.Dense(2048, activation="relu", name="fc2")(x)
    return keras.Model(inputs, keras.layers.Dense(1000, name="logits")(x), name="mlp"), \
        "Dense MLP 1024-2048-2048-1000"


def run(name, builder, args, root):
    tf.random.set_seed(0)
    model, source = builder()
    depthwise = [layer.name for layer in model.layers
                 if isinstance(layer, keras.layers.DepthwiseConv2D)]
    sparse = tfl.sparsify(model, args.sparsity, distribution="erk", seed=0,
                          dense_layers=depthwise)
    start = time.time()
    report = export(sparse, os.path.join(root, name), overwrite=True,
                    provenance={"method": "random (benchmark)", "level": args.sparsity},
                    latency_runs=args.runs, num_threads=args.threads, verbose=False)
    print(f"\n=== {name}: {source}, {args.sparsity:.0%} ERK "
          f"(export {time.time() - start:.0f} s) ===")
    print(report.table())
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="invocations per model")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--output_dir", default=None, help="keep the exports here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tfl_export_speed_") as tmp:
        root = args.output_dir or tmp
        reports = {"mobilenet_v1": run("mobilenet_v1", mobilenet_v1, args, root),
                   "mlp": run("mlp", mlp, args, root)}

    print("\n=== summary: dense / sparse ratios (> 1 means sparse is better) ===")
    header = f"{'model':<14}{'latency':>9}{'dense ms':>10}{'sparse ms':>11}" \
             f"{'size':>8}{'gzip size':>11}{'FLOPs':>8}  sparse-encoded weights"
    print(header)
    summary = {}
    for name, r in reports.items():
        med = r["latency"]["median_ms"]
        consumers = r["tflite"]["sparse_encoding"]["consumers"]
        summary[name] = {"latency_ratio": r["latency"]["speedup"],
                         "dense_ms": med["dense"], "sparse_ms": med["sparse"],
                         "size_ratio": r["size_ratio"]["tflite"],
                         "gzip_size_ratio": r["size_ratio"]["tflite_gzip"],
                         "flops_ratio": r["flops"]["ratio"],
                         "dense_bytes": r["files"]["model_dense.tflite"]["bytes"],
                         "sparse_bytes": r["files"]["model_sparse.tflite"]["bytes"],
                         "sparse_encoded": consumers}
        s = summary[name]
        print(f"{name:<14}{s['latency_ratio']:>8.2f}x{s['dense_ms']:>10.2f}{s['sparse_ms']:>11.2f}"
              f"{s['size_ratio']:>7.2f}x{s['gzip_size_ratio']:>10.2f}x{s['flops_ratio']:>7.2f}x  "
              + ", ".join(f"{k}: {v}" for k, v in consumers.items()))
    print(f"\ninterpreter: {reports['mlp']['latency']['interpreter']}, "
          f"{args.threads} thread(s), median of {args.runs} runs, round-robin")
    print("speed (mobilenet_v1): " + reports["mobilenet_v1"]["speed_note"])
    print("speed (mlp): " + reports["mlp"]["speed_note"])
    if args.output_dir:
        with open(os.path.join(args.output_dir, "export_speed.json"), "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
