"""``deepspeed launchers/train.py --deepspeed ds_configs/stage1.json [--key value ...]``: ``mta-moe train``."""

import sys

from mta_moe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
