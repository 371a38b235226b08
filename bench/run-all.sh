#!/usr/bin/env bash
# Runs every benchmark in bench/, one after the other, with the repository's
# venv (`make bench`). A benchmark is a bench/*.py script that writes its JSON
# under bench/results/ (it names that path); helper modules such as
# bench/workload.py are skipped. Extra arguments go to every benchmark (e.g.
# --repeats 5, which they all accept). Exit status: non-zero if any failed;
# all are still run.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
status=0
ran=0
for script in bench/*.py; do
    [ -e "$script" ] || continue
    grep -q "bench/results/" "$script" || continue
    echo "== $script ($(date '+%H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg))"
    ran=$((ran + 1))
    if ! "$PY" "$script" "$@"; then
        echo "!! $script failed" >&2
        status=1
    fi
done
echo "== ran $ran benchmark(s); results in bench/results/"
exit $status
