"""What the early-stopping metric costs: IMP on digits with and without validation.

    python benchmarks/imp_validation.py [--rounds=3] [--levels=2]

The digits job's settings (LeNet-300-100, Adam 1.2e-3, batch 60, 60 epochs of the
1,131 training digits = 1,140 iterations per level, 126 held-out validation digits),
run in one process, round-robin, three ways: no validation data, validation every 100
iterations (the config's rate, Frankle & Carbin's), and validation after every epoch
of 19 iterations (about the rate of Keras's per-epoch ``validation_data``, which the
runner used before). Prints the median training seconds of a level per way and their
ratio to the run without validation.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tf_lottery  # noqa: E402,F401
from tf_lottery._keras import keras  # noqa: E402
from tf_lottery.lottery import IterativeMagnitudePruning  # noqa: E402
from tf_lottery.training import datasets, models  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levels", type=int, default=2)
    args = parser.parse_args()
    train = datasets.digits_split("train[:90%]")
    validation = datasets.digits_split("train[90%:]")
    test = datasets.digits_split("test")

    def build():
        return models.lenet_300_100(input_shape=(8, 8, 1), num_classes=10)

    def adam():
        return keras.optimizers.Adam(1.2e-3)

    ways = {"no validation": {}, "every 100 iterations": {"eval_every": 100},
            "every epoch (19 iterations)": {"eval_every": 19}}
    seconds = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, kw in ways.items():
            extra = dict(kw, validation_data=validation) if kw else {}
            imp = IterativeMagnitudePruning(build, train, test, adam, epochs=60, batch_size=60,
                                            levels=args.levels, verbose=0, **extra)
            start = time.perf_counter()
            rows = imp.run()
            seconds[name].append((time.perf_counter() - start) / args.levels)
            assert (rows[-1]["early_stop_iteration"] is None) == (not kw)
    base = statistics.median(seconds["no validation"])
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:30s} {median:6.2f} s per level   x{median / base:.3f}")


if __name__ == "__main__":
    main()
