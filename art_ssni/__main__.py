"""``python -m art_ssni`` runs the command line."""

import sys

from .cli import main

sys.exit(main())
