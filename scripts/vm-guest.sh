#!/usr/bin/env bash
# Runs inside the VM that scripts/vm-run.sh boots, as root: prepares cgroup v2, then runs
# the command file as root, as `nobody` with a delegated subtree, or both in turn. Not
# for the host.
#
#   vm-guest.sh root|user|both CMDFILE [PHASE_TIMEOUT_S]
#   vm-guest.sh delegate CMDFILE   (internal: user's delegation alone, as its own step)
#
# root: enables +memory +pids in the root cgroup's subtree_control, runs CMDFILE.
# user: also makes /sys/fs/cgroup/lm-user (controllers enabled for its children),
#       chowns it and its delegation files (cgroup.procs, cgroup.subtree_control,
#       cgroup.threads) to nobody, moves the command into the leaf lm-user/init (the "no
#       internal processes" rule keeps processes out of a cgroup that hands controllers
#       down), and runs CMDFILE as nobody:nogroup with LOADMASTER_VM_CGROUP set.
# both: root, then user, in this one boot (a boot costs minutes under TCG); exits with
#       the first failing status. Each run is bounded by PHASE_TIMEOUT_S (default: none),
#       and ends with one line `vm-guest: as root|nobody: exit N (...)`. While a run goes on,
#       every LOADMASTER_VM_HEARTBEAT seconds (default 60) a line `vm-guest: as WHO: still
#       running (S s)` and the run's process tree with each process's kernel wait channel.
#       The delegation before the nobody run is a step of its own, bounded and watched the
#       same way; it ends with a line `vm-guest: delegating to nobody: exit N (S s)`, and
#       when it fails the nobody run does not start (its status is the step's).
set -euo pipefail
mode=$1
cmd=$2
phase_timeout=${3:-0}
CG=/sys/fs/cgroup
sub=$CG/lm-user
home=/tmp/lm-home-nobody

setup() {
if ! grep -qw memory "$CG/cgroup.controllers" 2>/dev/null; then
  echo "vm-guest: no memory controller in $CG/cgroup.controllers" >&2
  exit 3
fi
# The host's root file system is mounted read-only here (9p); /tmp is an overlay whose
# writes stay in the VM. Make sure of it: a test must never write the host's /tmp.
if [ "$(findmnt -n -o FSTYPE /tmp 2>/dev/null)" != overlay ]; then
  mount -t tmpfs -o mode=1777 lm-tmp /tmp
fi
echo "+memory +pids" >"$CG/cgroup.subtree_control"
export LOADMASTER_IN_VM=1
echo "vm-guest: up after $(cut -d. -f1 /proc/uptime) s" >&2
}

# Every $heartbeat seconds while a run goes on: one line saying so, then the run's process
# tree (pid, state, seconds, kernel wait channel, command), so a run that hangs shows where.
heartbeat=${LOADMASTER_VM_HEARTBEAT:-60}
beat() {
  local who=$1 top=$2 t0=$3
  while sleep "$heartbeat"; do
    kill -0 "$top" 2>/dev/null || return 0
    echo "vm-guest: $who: still running ($((SECONDS - t0)) s); its processes:" >&2
    ps -eo pid=,ppid=,user=,stat=,etimes=,wchan:24=,args= 2>/dev/null | awk -v top="$top" '
      { pid[NR] = $1; ppid[NR] = $2; line[NR] = $0 }
      END {
        keep[top] = 1
        do { more = 0; for (i = 1; i <= NR; i++) if (!(pid[i] in keep) && (ppid[i] in keep)) { keep[pid[i]] = 1; more = 1 } } while (more)
        for (i = 1; i <= NR; i++) if (pid[i] in keep) print "vm-guest:   " substr(line[i], 1, 200)
        for (i = 1; i <= NR; i++) if ((pid[i] in keep) && split(line[i], f) >= 4 && f[4] ~ /^D/) print pid[i] > "/run/lm-stuck"
      }' >&2
    # A process stuck in the kernel (state D): its system call and its kernel stack.
    if [ -s /run/lm-stuck ]; then
      local p
      while read -r p; do
        echo "vm-guest:   pid $p in state D: syscall $(cut -d' ' -f1-3 "/proc/$p/syscall" 2>/dev/null);" \
          "fds: $(ls -l "/proc/$p/fd" 2>/dev/null | awk 'NR > 1 { printf "%s=%s ", $9, $11 }')" >&2
        sed 's/^/vm-guest:     /' "/proc/$p/stack" 2>/dev/null | head -n 12 >&2
      done </run/lm-stuck
    fi
    rm -f /run/lm-stuck
  done
}

# One step (a run of the command, or the delegation), bounded by the phase timeout and
# watched by the heartbeat; prints how it ended. $1: what (for the lines: "as root",
# "delegating to nobody"), rest: argv.
phase() {
  local who=$1 rc; shift
  local t0=$SECONDS
  set +e
  if [ "$phase_timeout" -gt 0 ]; then
    timeout -k 10 "$phase_timeout" "$@" &
  else
    "$@" &
  fi
  local top=$!
  beat "$who" "$top" "$t0" &
  local beater=$!
  wait "$top"
  rc=$?
  kill "$beater" 2>/dev/null
  wait "$beater" 2>/dev/null
  set -e
  local why=""
  [ $rc = 124 ] && why=", killed after ${phase_timeout} s"
  echo "vm-guest: $who: exit $rc ($((SECONDS - t0)) s$why)" >&2
  return $rc
}

as_root() { phase "as root" bash "$cmd"; }

delegate() {
  echo "vm-guest: delegating $sub to nobody (at $(cut -d. -f1 /proc/uptime) s)" >&2
  mkdir -p "$sub/init"
  echo "+memory +pids" >"$sub/cgroup.subtree_control"
  chown nobody:nogroup "$sub" "$sub/cgroup.procs" "$sub/cgroup.subtree_control" "$sub/cgroup.threads"
  chown -R nobody:nogroup "$sub/init"
  mkdir -p "$home"
  chown nobody:nogroup "$home"
  # The host's ACLs (tests/unprivileged.py grants traverse on /root that way) do not
  # cross 9p, so nobody may be unable to reach the interpreter. For each directory on the
  # way to the command's program, the Python it runs and the working directory that
  # nobody cannot traverse, lay a tmpfs-backed overlay on it inside the VM and add o+x
  # there; the host's directory is not touched (the VM sees its root file system read-only).
  local d dirs
  dirs=$(bash "$(dirname "$0")/vm-paths.sh" "$cmd")
  for d in $dirs; do traverse "$d"; done
}
ovl=/run/lm-ovl
traverse() {
  local d=$1
  [ -d "$d" ] || return 0
  setpriv --reuid=nobody --regid=nogroup --clear-groups -- test -x "$d" && return 0
  chmod o+x "$d" 2>/dev/null && return 0
  mountpoint -q "$ovl" || { mkdir -p "$ovl"; mount -t tmpfs lm-ovl "$ovl"; }
  local k
  k=$ovl/$(echo "$d" | tr / _)
  mkdir -p "$k.up" "$k.work"
  echo "vm-guest: $d: an overlay with o+x, so nobody may traverse it" >&2
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$k.up,workdir=$k.work" "$d"
  chmod o+x "$d"
}
# The command as nobody, in the leaf lm-user/init: a subshell moves itself there first, so
# this script (root's run before it, in `both`) stays in the root cgroup.
as_user() {
  phase "delegating to nobody" bash "$0" delegate "$cmd" || return
  phase "as nobody" sh -c 'echo $$ > "$1/init/cgroup.procs" && shift && exec "$@"' sh "$sub" \
    env HOME="$home" USER=nobody LOGNAME=nobody LOADMASTER_VM_CGROUP="$sub" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups -- bash "$cmd"
}

[ "$mode" = delegate ] && { delegate; exit; }
setup
case "$mode" in
  root) as_root ;;
  user) as_user ;;
  both) rc=0; as_root || rc=$?; as_user || { r=$?; [ $rc != 0 ] || rc=$r; }; exit $rc ;;
  *) echo "vm-guest: mode must be root, user or both, not $mode" >&2; exit 2 ;;
esac
