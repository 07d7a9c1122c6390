import sys

from gsplat2d.train.cli import main

sys.exit(main())
