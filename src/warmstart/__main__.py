"""`python -m warmstart` — so that `accelerate launch -m warmstart ...` works."""

import sys

from warmstart.cli import main

if __name__ == "__main__":
    sys.exit(main())
