#!/usr/bin/env bash
# Runs inside the VM that scripts/vm-run.sh boots, as root: prepares cgroup v2, then runs
# the command file as root or as `nobody` with a delegated subtree. Not for the host.
#
#   vm-guest.sh root|user CMDFILE
#
# root: enables +memory +pids in the root cgroup's subtree_control, runs CMDFILE.
# user: also makes /sys/fs/cgroup/lm-user (controllers enabled for its children),
#       chowns it and its delegation files (cgroup.procs, cgroup.subtree_control,
#       cgroup.threads) to nobody, moves this shell into the leaf lm-user/init (the "no
#       internal processes" rule keeps processes out of a cgroup that hands controllers
#       down), and runs CMDFILE as nobody:nogroup with LOADMASTER_VM_CGROUP set.
set -euo pipefail
mode=$1
cmd=$2
CG=/sys/fs/cgroup

if ! grep -qw memory "$CG/cgroup.controllers" 2>/dev/null; then
  echo "vm-guest: no memory controller in $CG/cgroup.controllers" >&2
  exit 3
fi
echo "+memory +pids" >"$CG/cgroup.subtree_control"
export LOADMASTER_IN_VM=1

if [ "$mode" = root ]; then
  exec bash "$cmd"
fi

sub=$CG/lm-user
mkdir -p "$sub/init"
echo "+memory +pids" >"$sub/cgroup.subtree_control"
chown nobody:nogroup "$sub" "$sub/cgroup.procs" "$sub/cgroup.subtree_control" "$sub/cgroup.threads"
chown -R nobody:nogroup "$sub/init"
echo $$ >"$sub/init/cgroup.procs"
home=/tmp/lm-home-nobody
mkdir -p "$home"
chown nobody:nogroup "$home"
# The host's ACLs (tests/unprivileged.py grants traverse on /root that way) do not
# cross 9p, so nobody may be unable to reach the interpreter. For each directory on the
# way to the command's program, the Python it runs and the working directory that
# nobody cannot traverse, lay a tmpfs-backed overlay on it inside the VM and add o+x
# there; the host's directory is not touched (the VM sees its root file system read-only).
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
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$k.up,workdir=$k.work" "$d"
  chmod o+x "$d"
}
ancestors() {
  local p=$1
  while [ "$p" != / ] && [ -n "$p" ]; do echo "$p"; p=$(dirname "$p"); done | tac
}
prog=$(sed -n 's/^exec \([^ ]*\).*/\1/p' "$cmd")
paths=("$(sed -n "s/^cd //p" "$cmd")")
if [ -n "$prog" ] && command -v "$prog" >/dev/null 2>&1; then
  prog=$(command -v "$prog")
  paths+=("$prog" "$(readlink -f "$prog")")
fi
for p in "${paths[@]}"; do
  for d in $(ancestors "$(dirname "$p")"); do traverse "$d"; done
done

export HOME=$home USER=nobody LOGNAME=nobody LOADMASTER_VM_CGROUP=$sub
exec setpriv --reuid=nobody --regid=nogroup --clear-groups -- bash "$cmd"
