"""One instability figure from several ``instability_experiment`` runs (e.g. dense and a ticket).

    python tools/plot_instability.py --run=dense=runs/inst_dense \
        --run="ticket 10.7%=runs/inst_ticket10" --out=instability.png [--ymax=5]

Each ``--run=LABEL=DIR`` reads ``DIR/instability.json`` (a sweep over rewind points) and
becomes one line of error barrier against rewind iteration k (``tfl.plot_instability``).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tf_lottery.lottery import instability, results  # noqa: E402
from tf_lottery.training.instability_experiment import _result  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=DIR")
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="Instability analysis")
    parser.add_argument("--ymax", type=float, default=None,
                        help="top of the y axis in percentage points (default: automatic)")
    args = parser.parse_args()
    curves = {}
    for spec in args.run:
        label, sep, folder = spec.partition("=")
        if not sep:
            parser.error(f"--run={spec}: give LABEL=DIR, e.g. --run=dense=runs/inst_dense")
        rows = results.read_json(os.path.join(folder, "instability.json"))["rows"]
        curves[label] = [_result(r) for r in rows]
    instability.plot_instability(curves, args.out, args.title, args.ymax)
    for label, sweep in curves.items():
        print(label + ": " + ", ".join(f"k={r.rewind_iteration} {100 * r.barrier:.2f}"
                                       for r in sweep))


if __name__ == "__main__":
    main()
