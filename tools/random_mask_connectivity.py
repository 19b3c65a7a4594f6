"""How much of LeNet-300-100 a layer-wise random mask leaves connected, against the ticket's.

    python tools/random_mask_connectivity.py [--run_dir=RUN] [--draws=20]

For each level of the digits lottery-ticket job (``gin_configs/digits_lenet300100_imp.gin``:
64 inputs -> 300 -> 100 -> 10, 20% of each hidden layer's and 10% of the output layer's
surviving weights pruned per level), draws ``--draws`` layer-wise random masks with the
ticket's per-layer counts, as the ``random_mask`` control does
(``tf_lottery.masking.selection.random_mask``), and prints, per level:

- ``in->out paths``: input-to-output paths through kept weights (sum of the product of
  the three 0/1 masks);
- ``live weights``: kept weights on at least one such path, as a share of all kept ones
  (a weight off every path only feeds or reads a unit that is constant in the input);
- ``classes reached``: output units with at least one path from an input (of 10; an
  unreached class has a constant logit and can only be predicted for every image or none);
- ``inputs reaching``: input pixels with a path to some output (of 64).

Random figures are the mean over the draws (min-max in brackets). With ``--run_dir`` (a
finished digits IMP run folder), the ticket's own masks (``level_<i>/masks.npz``) are
measured too, and a second table runs both masks on the run's theta_0
(``rewind_point.npz``) over the 1,131 training digits: first- and second-layer units that
never activate (ReLU output 0 on every image), and the spread of the logits (standard
deviation over images, mean over classes); without it the per-layer counts come from the
pruning schedule.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from tf_lottery.masking import selection  # noqa: E402

SHAPES = [(64, 300), (300, 100), (100, 10)]
FRACTIONS = [0.2, 0.2, 0.1]


def connectivity(masks) -> dict:
    """Path and unit counts of three 0/1 kernel masks ``[(64, 300), (300, 100), (100, 10)]``."""
    m1, m2, m3 = (np.asarray(m, dtype=np.float64) for m in masks)
    forward = [np.ones(m1.shape[0])]
    for m in (m1, m2, m3):
        forward.append(forward[-1] @ m)  # paths from the inputs into each unit
    backward = [np.ones(m3.shape[1])]
    for m in (m3, m2, m1):
        backward.append(m @ backward[-1])  # paths from each unit to the outputs
    backward = backward[::-1]  # [inputs, fc1, fc2, outputs]
    live = sum(int(((forward[i][:, None] > 0) & (m > 0) & (backward[i + 1][None, :] > 0)).sum())
               for i, m in enumerate((m1, m2, m3)))
    kept = int(sum(m.sum() for m in (m1, m2, m3)))
    return {"remaining": kept / sum(m.size for m in (m1, m2, m3)),
            "paths": float(forward[-1].sum()), "live": live / max(kept, 1),
            "classes": int((forward[-1] > 0).sum()), "inputs": int((backward[0] > 0).sum())}


def activity(masks, theta, x) -> dict:
    """Hidden units never active on ``x`` and the logits' spread, for ``masks`` on ``theta``
    (kernels and biases in layer order)."""
    h, out = x, {}
    for i, (kernel, bias, mask) in enumerate(zip(theta[0::2], theta[1::2], masks)):
        z = h @ (kernel * mask) + bias
        if i < 2:
            h = np.maximum(z, 0.0)
            out[f"dead{i + 1}"] = int((h.max(axis=0) <= 0).sum())
        else:
            out["logit_std"] = float(z.std(axis=0).mean())
    return out


def schedule_counts(levels: int):
    """Kept weights per kernel at each level, by the runner's own pruning step."""
    rng = np.random.default_rng(0)
    masks = {str(i): np.ones(s, np.float32) for i, s in enumerate(SHAPES)}
    fractions = {str(i): f for i, f in enumerate(FRACTIONS)}
    out = []
    for _ in range(levels):
        out.append([int(m.sum()) for m in masks.values()])
        weights = {k: rng.normal(size=m.shape) for k, m in masks.items()}
        masks = selection.prune_surviving(weights, masks, fractions, "layerwise")
    return out


def _fmt(values, digits=0):
    values = np.asarray(values, dtype=np.float64)
    f = f"{{:.{digits}f}}"
    return f"{f.format(values.mean())} [{f.format(values.min())}-{f.format(values.max())}]"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", default=None)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--levels", type=int, default=20)
    parser.add_argument("--first", type=int, default=10)
    args = parser.parse_args()
    tickets = {}
    if args.run_dir:
        from tf_lottery.lottery import results
        for level in range(args.levels):
            path = os.path.join(args.run_dir, f"level_{level}", "masks.npz")
            if os.path.exists(path):
                tickets[level] = list(results.read_arrays(path).values())
    counts = schedule_counts(args.levels)
    print(f"{'level':>5} {'% kept':>6} {'per-layer % kept':>18} | random (mean [min-max] of "
          f"{args.draws}): {'paths':>18} {'live weights %':>16} {'classes':>12} "
          f"{'inputs':>12}" + (" | ticket: paths, live %, classes, inputs" if tickets else ""))
    for level in range(args.first, args.levels):
        kept = ([int(m.sum()) for m in tickets[level]] if level in tickets else counts[level])
        rows = []
        for draw in range(args.draws):
            rng = np.random.default_rng([draw, level])
            rows.append(connectivity([selection.random_mask(s, 1.0 - n / np.prod(s), rng)
                                      for s, n in zip(SHAPES, kept)]))
        layer = "/".join(f"{100 * n / np.prod(s):.1f}" for s, n in zip(SHAPES, kept))
        line = (f"{level:>5} {100 * rows[0]['remaining']:6.2f} {layer:>18} | "
                f"{_fmt([r['paths'] for r in rows]):>18} "
                f"{_fmt([100 * r['live'] for r in rows], 1):>16} "
                f"{_fmt([r['classes'] for r in rows], 1):>12} "
                f"{_fmt([r['inputs'] for r in rows], 1):>12}")
        if level in tickets:
            t = connectivity(tickets[level])
            line += (f" | {t['paths']:.0f}, {100 * t['live']:.1f}, {t['classes']}, "
                     f"{t['inputs']}")
        print(line)
    if not tickets:
        return
    from tf_lottery.lottery import results
    from tf_lottery.training import datasets
    point = results.read_arrays(os.path.join(args.run_dir, "rewind_point.npz"))
    theta = [point[k] for k in sorted(point)]
    x = datasets.digits_split("train[:90%]")[0].reshape(-1, 64)
    print(f"\nat theta_0 on the training digits: units never active (of 300 / 100), logits' std")
    for level in range(args.first, args.levels):
        if level not in tickets:
            continue
        kept = [int(m.sum()) for m in tickets[level]]
        rows = [activity([selection.random_mask(s, 1.0 - n / np.prod(s),
                                                np.random.default_rng([draw, level]))
                          for s, n in zip(SHAPES, kept)], theta, x)
                for draw in range(args.draws)]
        t = activity(tickets[level], theta, x)
        print(f"{level:>5} random: fc1 {_fmt([r['dead1'] for r in rows])}, fc2 "
              f"{_fmt([r['dead2'] for r in rows])}, logits "
              f"{_fmt([r['logit_std'] for r in rows], 4)} | ticket: fc1 {t['dead1']}, fc2 "
              f"{t['dead2']}, logits {t['logit_std']:.4f}")


if __name__ == "__main__":
    main()
