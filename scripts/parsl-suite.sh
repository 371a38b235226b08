#!/usr/bin/env bash
# Parsl's own executor-agnostic test suite against loadmaster.parsl.LoadmasterExecutor,
# once with the sandbox off and once with it on (tests/parsl_suite/config_loadmaster*.py).
#
# Parsl's conftest does not load under pytest 8+ (Parsl #4051; Parsl pins pytest < 8),
# so the suite runs from a venv of its own ($PARSL_VENV, default .parsl-venv in this
# tree), made on first use: pytest 7.4, pytest-random-order, parsl[monitoring] with
# SQLAlchemy < 2.1, pandas, and loadmaster editable from this tree. Each run goes in
# a scratch directory with an empty pytest.ini (Parsl's conftest writes
# ./pytest-parsl/), with a history and a ledger of its own.
#
# Exclusions, as in ../../shared/MACHINE-FACTS.md: cleannet (needs the network),
# unix_filesystem_permissions_required (the suite runs as root here), issue_3620
# (test_resource_spec accepts only the error text of Parsl's own executors).
#
# Usage: scripts/parsl-suite.sh [off|on ...] [-- extra pytest arguments]
# Prints pytest's own summary for each run, then one closing line in pytest's form
# with the counts of both runs; exits non-zero when any run failed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${PARSL_VENV:-$ROOT/.parsl-venv}
PYTHON=${PYTHON:-python3}
PARSL_VERSION=${PARSL_VERSION:-2026.10.26}

modes=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    off|on) modes+=("$1"); shift ;;
    *) echo "usage: $0 [off|on ...] [-- pytest args]" >&2; exit 2 ;;
  esac
done
[ ${#modes[@]} -gt 0 ] || modes=(off on)

stamp=$VENV/.installed-$PARSL_VERSION
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "parsl-suite: making $VENV (parsl $PARSL_VERSION, pytest 7.4)" >&2
  test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
  quiet() { grep -v "^WARNING: Location .* is ignored" || true; }  # this machine's pip.conf lists absent indexes
  "$VENV/bin/pip" install --quiet 'pytest>=7.4,<8' pytest-random-order \
      "parsl[monitoring]==$PARSL_VERSION" 'sqlalchemy<2.1' pandas cloudpickle 2>&1 | quiet
  "$VENV/bin/pip" install --quiet -e "$ROOT" 2>&1 | quiet
  touch "$stamp"
fi

PARSL_DIR=$("$VENV/bin/python" -c 'import os, parsl; print(os.path.dirname(parsl.__file__))')
scratch=$(mktemp -d "${TMPDIR:-/tmp}/loadmaster-parsl-suite.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

total_passed=0 total_failed=0 total_skipped=0 total_errors=0 status=0
start_all=$(date +%s.%N)
for mode in "${modes[@]}"; do
  case "$mode" in
    off) config=$ROOT/tests/parsl_suite/config_loadmaster.py ;;
    on) config=$ROOT/tests/parsl_suite/config_loadmaster_sandbox.py ;;
  esac
  dir=$scratch/sandbox-$mode
  mkdir -p "$dir"
  : > "$dir/pytest.ini"
  log=$dir/pytest.log
  echo "parsl-suite: sandbox $mode, config $config" >&2
  set +e
  (cd "$dir" && \
   LOADMASTER_HISTORY=$dir/history.sqlite LOADMASTER_LEDGER=$dir/ledger \
   "$VENV/bin/python" -m pytest -c pytest.ini -p no:cacheprovider "$PARSL_DIR/tests" \
     --config "$config" \
     -k "not cleannet and not unix_filesystem_permissions_required and not issue_3620" \
     --random-order -q "$@") 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  [ "$rc" -eq 0 ] || status=1
  summary=$(grep -E '^(=+ )?[0-9]+ [a-z]+.* in [0-9.]+s( \([0-9:]+\))?( =+)?$' "$log" | tail -1 || true)
  count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
  p=$(count passed); f=$(count failed); s=$(count skipped); e=$(count 'errors?')
  echo "parsl-suite: sandbox $mode: $p passed, $f failed, $s skipped, $e errors ($summary)" >&2
  total_passed=$((total_passed + p)); total_failed=$((total_failed + f))
  total_skipped=$((total_skipped + s)); total_errors=$((total_errors + e))
  [ "$rc" -eq 0 ] || [ -n "$summary" ] || total_errors=$((total_errors + 1))
done
secs=$(echo "$(date +%s.%N) - $start_all" | bc)
parts="$total_passed passed"
[ "$total_failed" -eq 0 ] || parts="$total_failed failed, $parts"
[ "$total_skipped" -eq 0 ] || parts="$parts, $total_skipped skipped"
[ "$total_errors" -eq 0 ] || parts="$parts, $total_errors errors"
printf '========== %s in %.2fs (parsl suite, sandbox %s) ==========\n' "$parts" "$secs" "${modes[*]}"
exit $status
