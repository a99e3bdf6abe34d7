"""`python -m laion_pipe ...`: the same command as the `laion-pipe` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
