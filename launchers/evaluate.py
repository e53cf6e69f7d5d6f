"""``python launchers/evaluate.py ...``: the same as ``mta-moe evaluate ...`` (see ``mta-moe evaluate --help``)."""

import sys

from mta_moe.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
