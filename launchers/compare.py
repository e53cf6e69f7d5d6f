"""``python launchers/compare.py ...``: the same as ``mta-moe compare ...`` (see ``mta-moe compare --help``)."""

import sys

from mta_moe.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
