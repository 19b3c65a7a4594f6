"""Round-robin wall-clock timing: the one loop behind every latency tf-lottery reports."""
import time
from typing import Callable, Dict

import numpy as np


def round_robin(runners: Dict[str, Callable[[], object]], rounds: int = 20,
                min_seconds: float = 0.0, warmup: int = 1) -> Dict[str, float]:
    """Median seconds per call of each zero-argument ``runner``.

    Each runner is called ``warmup`` times first (tracing, caches); then every round calls
    each once, in a fresh random order (no position bias), for at least ``rounds`` rounds
    and ``min_seconds`` seconds, so that a slow spell on the machine hits every runner.
    """
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {n: [] for n in runners}
    names = list(runners)
    rng = np.random.default_rng(0)
    start, r = time.perf_counter(), 0
    while r < rounds or time.perf_counter() - start < min_seconds:
        for i in rng.permutation(len(names)):
            t = time.perf_counter()
            runners[names[i]]()
            times[names[i]].append(time.perf_counter() - t)
        r += 1
    return {n: float(np.median(t)) for n, t in times.items()}
