"""`python -m noisybench ...`: the same as the `noisybench` command."""
import sys

from noisybench.cli import main

if __name__ == "__main__":
    sys.exit(main())
