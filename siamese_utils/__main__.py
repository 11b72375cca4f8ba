"""``python -m siamese_utils COMMAND``: the command line (see :mod:`siamese_utils.tools.cli`)."""

import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
