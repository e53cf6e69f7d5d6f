"""``python launchers/report.py ...``: the same as ``mta-moe report ...`` (see ``mta-moe report --help``)."""

import sys

from mta_moe.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
