"""Run the xpconv benchmark suite from a source checkout: the same as ``xpconv bench`` (see README.md here)."""
import sys

from xpconv.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
