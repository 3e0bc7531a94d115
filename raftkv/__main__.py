"""`python -m raftkv`: the `raftkv` command (raftkv/client/cli.py)."""

import sys

from raftkv.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
