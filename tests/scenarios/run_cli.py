"""Run the loadmaster CLI with the given arguments (for running it as another user)."""

import sys

from loadmaster.cli import main

sys.exit(main(sys.argv[1:]))
