"""`python -m pgolf ...` is the same as the `pgolf` command."""

import sys

from pgolf.cli import main

sys.exit(main())
