"""`python -m quiver` runs the `quiver` command."""

import sys

from quiver.cli import main

sys.exit(main())
