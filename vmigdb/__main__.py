"""``python -m vmigdb``: the ``vmigdb`` command line."""

import sys

from vmigdb.cli import main

sys.exit(main())
