"""``python -m jaxprune demo ...``: the same as the ``jaxprune`` console script."""

import sys

from jaxprune.demos.cli import main

if __name__ == "__main__":
    sys.exit(main())
