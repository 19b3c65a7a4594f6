#!/usr/bin/env python
"""Training-step overhead of tf-lottery's Keras 3 MaskedLayer against the dense Keras 3 model,
per backend (TensorFlow, JAX, and PyTorch when torch is installed).

Each backend runs in its own subprocess (``KERAS_BACKEND`` is fixed per process). Inside it,
two shapes of work are trained with ``model.fit`` on one fixed synthetic batch, repeated:

- LeNet-300-100 (784-300-100-10, batch 60, Adam; ``--lenet-optimizer sgd``: SGD with
  momentum);
- a CIFAR-shaped ResNet-20 (32x32x3, batch 128, SGD momentum 0.9);

each as ``dense`` (the plain model) and ``masked`` (``tfl.sparsify(model, 0.9, "erk")``).
Every variant is compiled and warmed up once (tracing excluded), then the variants are timed
round-robin (the order alternates every round): one round fits each variant for a fixed
number of steps and reads one weight back (so asynchronous backends have finished). The
number is the median over rounds of the time per step (wall clock, and process CPU time,
which a busy shared machine disturbs less); ratio = masked / dense.

    python benchmarks/keras3_step_overhead.py                   # tensorflow, jax (+ torch)
    python benchmarks/keras3_step_overhead.py --backends jax --shapes lenet --rounds 9

Wall-clock ratios need a quiet machine: on 2 shared cores single runs swing by several %.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARSITY = 0.9
SHAPES = ("lenet", "resnet20")


def _child(args):
    import keras
    import numpy as np

    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import tf_lottery as tfl

    from keras3_models import lenet, resnet20

    specs = {
        "lenet": (lenet, (784,), 60,
                  (lambda: keras.optimizers.Adam(1e-3)) if args.lenet_optimizer == "adam" else
                  (lambda: keras.optimizers.SGD(0.01, momentum=0.9)), args.lenet_steps),
        "resnet20": (resnet20, (32, 32, 3), 128,
                     lambda: keras.optimizers.SGD(0.01, momentum=0.9), args.resnet_steps),
    }
    results = {}
    for shape in args.shapes:
        build, input_shape, batch, optimizer, steps = specs[shape]
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch * steps,) + input_shape).astype("float32")
        y = rng.integers(0, 10, size=(batch * steps,)).astype("int32")
        runs = {}
        for variant in ("dense", "masked"):
            keras.utils.set_random_seed(0)
            model = build()
            if variant == "masked":
                model = tfl.sparsify(model, SPARSITY, "erk", seed=0)
            model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
            model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0)
            runs[variant] = model
        wall, cpu = {v: [] for v in runs}, {v: [] for v in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for variant in order:
                model = runs[variant]
                start, start_cpu = time.perf_counter(), time.process_time()
                model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
                keras.ops.convert_to_numpy(model.trainable_variables[0].value)
                wall[variant].append((time.perf_counter() - start) / steps)
                cpu[variant].append((time.process_time() - start_cpu) / steps)
        med = {v: float(np.median(t)) for v, t in wall.items()}
        med_cpu = {v: float(np.median(t)) for v, t in cpu.items()}
        results[shape] = {"ms_per_step": {v: 1e3 * m for v, m in med.items()},
                          "cpu_ms_per_step": {v: 1e3 * m for v, m in med_cpu.items()},
                          "ratio": med["masked"] / med["dense"],
                          "cpu_ratio": med_cpu["masked"] / med_cpu["dense"],
                          "rounds": args.rounds, "steps": steps}
    json.dump(results, sys.stdout)


def _backends_available():
    import importlib.util
    names = ["tensorflow", "jax"]
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=None)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=SHAPES)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--lenet-steps", type=int, default=50)
    parser.add_argument("--resnet-steps", type=int, default=4)
    parser.add_argument("--lenet-optimizer", choices=("adam", "sgd"), default="adam",
                        help="sgd: with momentum 0.9 (PyTorch's sqrt of Adam's zero state "
                        "in masked entries is slow on CPU, see the README)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args)
    backends = args.backends or _backends_available()
    print(f"# masked (sparsity {SPARSITY}, ERK) / dense step time, median of {args.rounds} "
          "round-robin rounds")
    print(f"{'backend':<11} {'shape':<9} {'dense ms':>9} {'masked ms':>10} {'ratio':>7} "
          f"{'cpu ratio':>9}")
    for backend in backends:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
        env.pop("TF_USE_LEGACY_KERAS", None)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--rounds",
               str(args.rounds), "--lenet-steps", str(args.lenet_steps), "--resnet-steps",
               str(args.resnet_steps), "--lenet-optimizer", args.lenet_optimizer,
               "--shapes", *args.shapes]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{backend:<11} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        for shape, row in json.loads(done.stdout.strip().splitlines()[-1]).items():
            ms = row["ms_per_step"]
            print(f"{backend:<11} {shape:<9} {ms['dense']:9.2f} {ms['masked']:10.2f} "
                  f"{row['ratio']:7.3f} {row['cpu_ratio']:9.3f}", flush=True)


if __name__ == "__main__":
    main()
