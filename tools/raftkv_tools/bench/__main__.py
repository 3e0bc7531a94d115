import sys

from raftkv_tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
