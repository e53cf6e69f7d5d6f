"""``python -m mta_moe ...``: the ``mta-moe`` command."""

import sys

from .cli import main

sys.exit(main())
