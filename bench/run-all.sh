#!/usr/bin/env bash
# Runs every benchmark script in bench/ (bench/*.py), one after the other, with
# the repository's venv; each writes its JSON under bench/results/. Used by
# `make bench`. Extra arguments are passed to every script (e.g. --repeats 5).
# Exit status: non-zero if any script failed (all are still run).
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
status=0
for script in bench/*.py; do
    [ -e "$script" ] || continue
    case "$(basename "$script")" in _*) continue ;; esac   # helpers, not benchmarks
    echo "== $script ($(date '+%H:%M:%S'), load $(cut -d' ' -f1-3 /proc/loadavg))"
    if ! "$PY" "$script" "$@"; then
        echo "!! $script failed" >&2
        status=1
    fi
done
exit $status
