"""``python -m clipadapt`` (and ``torchrun -m clipadapt``) runs the command line."""

import sys

from clipadapt.cli import main

sys.exit(main())
