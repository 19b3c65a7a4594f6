"""What IMP prints while it runs: a level progress bar and one line per level.

On a terminal, a Keras ``Progbar`` over the levels (levels done, time per level, time
left) with each level's line printed above it; in a log file (stdout not a terminal), the
same figures at the start of each level's line:
``[3/20 levels, 14.2 s/level, about 0:04:01 left] level 2: ...``. Verbosity 0 sends the
line to the ``tf_lottery`` logger (INFO) instead.
"""
import logging
import sys
import time

log = logging.getLogger("tf_lottery")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LevelProgress:
    """Progress over ``levels`` levels, resuming at ``start_level``; ``verbose`` as
    ``IterativeMagnitudePruning``'s (0: logger only, >= 1: printed)."""

    def __init__(self, levels: int, start_level: int, verbose: int):
        self.levels, self.first, self.verbose = levels, start_level, int(verbose)
        self.start = time.perf_counter()
        self.bar = None
        if self.verbose >= 1 and hasattr(sys.stdout, "isatty") and sys.stdout.isatty():
            from tf_lottery._keras import keras
            self.bar = keras.utils.Progbar(levels, unit_name="level")
            self.bar.update(start_level)

    def level_done(self, level: int, line: str) -> None:
        """Shows that ``level`` finished, with its one-line summary ``line``."""
        if self.verbose < 1:
            log.info("%s", line)
        elif self.bar is not None:
            sys.stdout.write("\r\033[K" + line + "\n")  # above the bar, which redraws below
            sys.stdout.flush()
            self.bar.update(level + 1)
        else:
            per_level = (time.perf_counter() - self.start) / (level + 1 - self.first)
            left = per_level * (self.levels - level - 1)
            print(f"[{level + 1}/{self.levels} levels, {per_level:.1f} s/level, about "
                  f"{_clock(left)} left] {line}", flush=True)
