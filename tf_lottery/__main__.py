"""``python -m tf_lottery train|export [--flags]``: the same as the ``tf-lottery`` command."""
from tf_lottery.cli import main

main()
