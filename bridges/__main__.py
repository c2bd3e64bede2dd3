"""`python -m bridges` runs the `actorfleet` command."""

import sys

from bridges.cli import main

sys.exit(main())
