"""`python -m bridges` runs the `actorfleet` command."""

import sys

from bridges._cli import main

sys.exit(main())
