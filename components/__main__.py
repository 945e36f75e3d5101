"""`python -m components` is the same as the `busi` command."""

import sys

from busi.cli import main

sys.exit(main())
