"""``python -m gsplat2d.eval``: validate a super-resolution model (see :mod:`gsplat2d.eval.cli`)."""

import sys

from gsplat2d.eval.cli import main

sys.exit(main())
