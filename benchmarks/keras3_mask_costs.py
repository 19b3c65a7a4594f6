#!/usr/bin/env python
"""Two costs behind the Keras 3 masked/dense step ratios (README, "Step overhead"):

- ``jax``: a standalone jitted LeNet-300-100 step (784-300-100-10, batch 60, SGD momentum)
  with its weight gradients masked by a float32, a uint8 or a bool mask (``jnp.where``)
  against no mask, round-robin, median of per-round ratios: what reading the mask costs
  once XLA fuses the multiply into the update;
- ``torch``: ``torch._foreach_sqrt`` (Adam's update) over 235,200 floats that are all
  positive, 90% exact zeros (Adam's second moment in masked entries), or subnormal.

    python benchmarks/keras3_mask_costs.py [--rounds 31]
"""
import argparse
import statistics
import time


def jax_mask_dtypes(rounds):
    import jax
    import jax.numpy as jnp
    shapes = [(784, 300), (300, 100), (100, 10)]
    key = jax.random.PRNGKey(0)
    weights = [jax.random.normal(jax.random.fold_in(key, i), s) * 0.05
               for i, s in enumerate(shapes)]
    f32 = [(jax.random.uniform(jax.random.fold_in(key, 10 + i), s) < 0.1).astype(jnp.float32)
           for i, s in enumerate(shapes)]
    masks = {"none": f32, "float32": f32, "uint8": [m.astype(jnp.uint8) for m in f32],
             "bool": [m > 0.5 for m in f32]}
    x = jax.random.normal(key, (60, 784))
    y = jax.random.randint(key, (60,), 0, 10)

    def loss(ws):
        h = x
        for i, w in enumerate(ws):
            h = h @ w
            h = jax.nn.relu(h) if i < 2 else h
        return -jnp.mean(jax.nn.log_softmax(h)[jnp.arange(60), y])

    def make(kind):
        def step(ws, moments, ms):
            grads = jax.grad(loss)(ws)
            if kind == "bool":
                grads = [jnp.where(m, g, 0.0) for g, m in zip(grads, ms)]
            elif kind != "none":
                grads = [g * m.astype(jnp.float32) for g, m in zip(grads, ms)]
            moments = [0.9 * m + g for m, g in zip(moments, grads)]
            return [w - 0.01 * m for w, m in zip(ws, moments)], moments
        return jax.jit(step, donate_argnums=(0, 1))

    steps = {kind: make(kind) for kind in masks}
    state = {kind: ([w * 1 for w in weights], [jnp.zeros(s) for s in shapes]) for kind in masks}
    times = {kind: [] for kind in masks}
    kinds = list(masks)
    for r in range(rounds + 1):
        for kind in kinds[r % 4:] + kinds[:r % 4]:
            ws, moments = state[kind]
            start = time.perf_counter()
            for _ in range(100):
                ws, moments = steps[kind](ws, moments, masks[kind])
            jax.block_until_ready(ws)
            times[kind].append(time.perf_counter() - start)
            state[kind] = (ws, moments)
    print(f"JAX, LeNet-300-100 step with a gradient mask / without, median of {rounds} rounds")
    for kind in kinds[1:]:
        ratio = statistics.median(a / b for a, b in zip(times[kind][1:], times["none"][1:]))
        print(f"  {kind:<8} {ratio:.3f}")


def torch_sqrt_zeros(rounds):
    import torch
    n = 235_200
    torch.manual_seed(0)
    positive = torch.rand(n) + 0.1
    zeros = positive.clone()
    zeros[torch.rand(n) < 0.9] = 0.0
    print("PyTorch, torch._foreach_sqrt over 235,200 float32")
    for name, t in (("positive", positive), ("90% zeros", zeros),
                    ("subnormal", positive * 1e-40)):
        torch._foreach_sqrt([t])
        runs = []
        for _ in range(rounds):
            start = time.perf_counter()
            for _ in range(20):
                torch._foreach_sqrt([t])
            runs.append((time.perf_counter() - start) / 20)
        print(f"  {name:<10} {statistics.median(runs) * 1e6:7.0f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--only", choices=("jax", "torch"))
    args = parser.parse_args()
    if args.only != "torch":
        jax_mask_dtypes(args.rounds)
    if args.only != "jax":
        try:
            torch_sqrt_zeros(args.rounds)
        except ImportError:
            print("PyTorch is not installed")


if __name__ == "__main__":
    main()
