"""``python -m gsplat2d.cli <command> ...``: the same dispatcher as the ``gsplat2d`` console command."""

import sys

from gsplat2d.cli import main

sys.exit(main())
