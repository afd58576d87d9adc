"""Entry point for `python -m funchost`."""

import sys

from funchost.cli import main

sys.exit(main())
