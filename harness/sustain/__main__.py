"""`python -m harness.sustain`: the command line of harness.sustain.cli."""

import sys

from harness.sustain.cli import main

if __name__ == "__main__":
    sys.exit(main())
