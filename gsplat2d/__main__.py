"""``python -m gsplat2d <command> ...``: the same dispatcher as the ``gsplat2d`` console command."""

import sys

from gsplat2d.cli import main

sys.exit(main())
