"""`python -m components` is the same as the `busi` command."""

import sys

from components.cli import main

sys.exit(main())
