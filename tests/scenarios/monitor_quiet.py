"""Run ``loadmaster monitor`` with its stderr (the command's replayed output) thrown away.

For commands whose output is large (``cat`` of a 200 MB file): the JSON report
on stdout is all the test reads. Usage: ``python monitor_quiet.py ARGS...``
(the arguments after ``loadmaster``).
"""

import os
import sys

from loadmaster.cli import main

null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 2)
sys.exit(main(sys.argv[1:]))
