"""Export a run's model or a saved sparse tf_keras model: plain SavedModel, TFLite, reports.

    python tools/export.py --run_dir=RUN [--level=N] [--kind=ticket|reinit|random_mask]
    python tools/export.py --checkpoint=run/model.h5 --output_dir=run/export

Same as ``tf-lottery export``; see ``tf_lottery.export.cli`` for the flags.
"""
import os
import sys

from absl import flags

# Runs from a checkout without installing: make the repo importable.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

if __name__ == "__main__":
    os.environ.setdefault("TF_LOTTERY_QUIET", "1")  # before TensorFlow loads (tf_lottery._quiet)

from tf_lottery import cli as _binary  # noqa: E402
from tf_lottery.export import cli  # noqa: E402

# Run as a script, it is ``tf-lottery export`` (absl's global flags). Imported (by a test,
# or another tool), the flags live in a private FlagValues, so they cannot clash with
# another tool's flags of the same names: parse them with FLAGS(argv), then main(argv).
FLAGS = flags.FlagValues()
cli.define_flags(FLAGS)
load_checkpoint = cli.load_checkpoint


def export_checkpoint():
    """Runs the export the flags describe; returns the report (a dict)."""
    return cli.export_checkpoint(FLAGS)


def main(argv):
    cli.main(argv, FLAGS)


if __name__ == "__main__":
    _binary.run("export")
