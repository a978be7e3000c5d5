"""``python -m diffusion_lib`` runs the command line (see :mod:`diffusion_lib.cli`)."""

import sys

from .cli import main

sys.exit(main())
