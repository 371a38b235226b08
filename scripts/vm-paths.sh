#!/usr/bin/env bash
# Prints, one a line from / down, every directory that `nobody` must traverse to run a
# command file of scripts/vm-run.sh: the working directory, the program (looked up from
# the working directory: the Makefile's is relative, .venv/bin/python) and what it links
# to. scripts/vm-guest.sh lays its o+x overlays on those; tests/test_vm_run.py runs it on
# the host.
#
#   vm-paths.sh CMDFILE
set -euo pipefail
cmd=$1
# The directories from / down to $1, made absolute first (a relative path's dirname stops
# at ".", never at /).
ancestors() {
  local p
  p=$(realpath -s -m -- "$1")
  while [ "$p" != / ] && [ -n "$p" ]; do echo "$p"; p=$(dirname "$p"); done | tac
}
prog=$(sed -n 's/^exec \([^ ]*\).*/\1/p' "$cmd")
wd=$(sed -n 's/^cd //p' "$cmd")
dirs=("$wd")
if [ -n "$prog" ] && prog=$(cd "$wd" && command -v "$prog"); then
  [ "${prog#/}" != "$prog" ] || prog=$wd/$prog
  dirs+=("$(dirname "$prog")" "$(dirname "$(readlink -f "$prog")")")
fi
for d in "${dirs[@]}"; do ancestors "$d"; done | awk '!seen[$0]++'
