#!/usr/bin/env bash
# Run a command inside a QEMU VM with cgroup v2 (Debian's kernel, this machine's own root
# file system over 9p) and exit with the command's status. `make test-vm` uses it.
#
#   scripts/vm-run.sh [--user|--both] [--skip-ok] [--memory 3G] [--cpus 2] [--timeout S]
#                     [--phase-timeout S] [--rwdir DIR]... -- COMMAND...
#
#   --user     run COMMAND as the ordinary user `nobody`, inside a delegated cgroup
#              subtree (/sys/fs/cgroup/lm-user, chowned to nobody; COMMAND starts in its
#              leaf lm-user/init). `useradd` cannot write /etc/shadow on the VM's overlay,
#              hence an existing account.
#   --both     in one boot, COMMAND as root, then as `nobody` as with --user (a boot costs
#              minutes under TCG); the exit status is the first failing run's. Each run
#              ends with a line `vm-guest: as root|nobody: exit N (S s)`.
#   --phase-timeout  seconds each run of COMMAND may take inside the VM (default: none);
#              a run killed so says so and the VM goes on to the next run or powers off.
#   --skip-ok  when the VM cannot start here (not root, packages not installable, no
#              kernel), say why on stderr and exit 0 instead of 2.
#   --timeout  seconds before the VM is killed (default 1800; exit status 124 then)
#   --rwdir    a host directory whose writes inside the VM must come back (repeatable);
#              out/vm/ is always one (COMMAND sees it as $LOADMASTER_VM_OUT).
#
# COMMAND runs in the current directory, with the caller's environment variables that
# start with LOADMASTER_ or PYTHON, plus LOADMASTER_IN_VM=1 and, with --user,
# LOADMASTER_VM_CGROUP (the delegated subtree). Everything else the VM writes (/tmp,
# /etc, /var, /home overlays) vanishes when it exits; the rest of the root file system
# is read-only inside.
#
# Installs when missing (root): qemu-system-x86, linux-image-amd64 (Debian's kernel
# goes to /boot; this machine's running kernel is not touched), busybox-static, and
# virtme-ng into .vm-venv/. Refuses an install that would remove a package.
# KVM is off (--disable-kvm): a KVM boot hung here; TCG boots in ~13 s and runs ~10x
# slower than the host.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VM_VENV=${LOADMASTER_VM_VENV:-$REPO/.vm-venv}
VNG=${LOADMASTER_VM_VNG:-$VM_VENV/bin/vng}  # another program in its place: tests/test_vm_run.py
PKGS=(qemu-system-x86 linux-image-amd64 busybox-static time xz-utils)
MEMORY=3G
CPUS=2
MODE=root
APPEND=""
PHASE_TIMEOUT_S=0
TIMEOUT_S=1800
SKIP_OK=0
RWDIRS=()

log() { echo "vm-run: $*" >&2; }
cannot() {
  if [ $SKIP_OK = 1 ]; then log "SKIPPED: $*"; exit 0; fi
  log "cannot start the VM: $*"; exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --user) MODE=user ;;
    --both) MODE=both ;;
    --phase-timeout) PHASE_TIMEOUT_S=$2; shift ;;
    --append) APPEND="$APPEND $2"; shift ;;
    --skip-ok) SKIP_OK=1 ;;
    --memory) MEMORY=$2; shift ;;
    --cpus) CPUS=$2; shift ;;
    --timeout) TIMEOUT_S=$2; shift ;;
    --rwdir) RWDIRS+=("$(cd "$2" && pwd)"); shift ;;
    --) shift; break ;;
    *) echo "usage: $0 [--user|--both] [--phase-timeout S] [--skip-ok] [--memory 3G] [--cpus N] [--timeout S] [--rwdir DIR]... -- COMMAND..." >&2; exit 2 ;;
  esac
  shift
done
[ $# -gt 0 ] || { echo "vm-run: no COMMAND after --" >&2; exit 2; }

[ "$(id -u)" = 0 ] || cannot "not root (uid $(id -u)): installing the VM's packages and reading /boot need root"

install_packages() {
  local missing=() p plan
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! plan=$(apt-get -s install --no-install-recommends "${missing[@]}" 2>&1); then
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true
    plan=$(apt-get -s install --no-install-recommends "${missing[@]}" 2>&1) \
      || cannot "apt cannot install ${missing[*]}: $(echo "$plan" | tail -n2 | tr '\n' ' ')"
  fi
  if echo "$plan" | grep -q '^Remv '; then
    cannot "installing ${missing[*]} would remove: $(echo "$plan" | sed -n 's/^Remv \([^ ]*\).*/\1/p' | tr '\n' ' ')"
  fi
  log "installing ${missing[*]} (once)"
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || cannot "apt-get install ${missing[*]} failed"
}

install_vng() {
  [ -x "$VNG" ] && return 0
  log "installing virtme-ng into $VM_VENV (once)"
  local py
  py=$(command -v python3) || cannot "no python3 for virtme-ng's venv"
  "$py" -m venv "$VM_VENV" >/dev/null || cannot "python3 -m venv $VM_VENV failed"
  "$VM_VENV/bin/pip" install --quiet virtme-ng >/dev/null || cannot "pip install virtme-ng failed"
}

exec 9>/run/lock/loadmaster-vm-install.lock
flock 9
install_packages
install_vng
exec 9>&-

KERNEL=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$KERNEL" ] || cannot "no Debian kernel in /boot (linux-image-amd64 did not install one)"

OUT=$REPO/out/vm
mkdir -p "$OUT"
RUN=$(mktemp -d "$OUT/run-XXXXXX")
trap 'rm -rf "$RUN"' EXIT
# The command and its environment travel in a file: no quoting through vng's --exec.
{
  printf 'cd %q\n' "$PWD"
  env | grep -E '^(LOADMASTER_|PYTHON)[A-Za-z0-9_]*=' | while IFS= read -r kv; do
    printf 'export %q\n' "$kv"
  done
  printf 'export LOADMASTER_VM_OUT=%q\n' "$OUT"
  printf 'exec'; printf ' %q' "$@"; printf '\n'
} >"$RUN/cmd.sh"
# --user: nobody reads the command file and may write results to out/vm/.
chmod 755 "$RUN"; chmod 644 "$RUN/cmd.sh"
[ $MODE != root ] && chmod 1777 "$OUT"

ARGS=(-r "$KERNEL" --force-9p --disable-kvm --memory "$MEMORY" --cpus "$CPUS"
      --append "cgroup_no_v1=all$APPEND" --rwdir "$OUT")
for d in "${RWDIRS[@]}"; do ARGS+=(--rwdir "$d"); done
log "booting $(basename "$KERNEL") (TCG, $CPUS CPUs, $MEMORY) as $MODE: $*"
t0=$SECONDS
export PATH="$VM_VENV/bin:$PATH"
# QEMU opens its stdout and stderr again by name (vng: `-chardev file,path=/proc/self/fd/1`),
# with O_TRUNC: a log file that is this script's stdout or stderr would be emptied at boot
# (what a caller wrote before is lost: NULs up to its write offset). Through FIFOs it
# reopens pipes instead, and a reader copies them on unchanged.
mkfifo "$RUN/stdout" "$RUN/stderr"
cat "$RUN/stdout" & out_pid=$!
cat "$RUN/stderr" >&2 & err_pid=$!
set +e
timeout -k 10 "$TIMEOUT_S" "$VNG" "${ARGS[@]}" --exec "bash $REPO/scripts/vm-guest.sh $MODE $RUN/cmd.sh $PHASE_TIMEOUT_S" \
  </dev/null >"$RUN/stdout" 2>"$RUN/stderr"
rc=$?
wait "$out_pid" "$err_pid"
set -e
case $rc in
  0) log "exit status 0 ($((SECONDS - t0)) s)" ;;
  124|137) log "FAILED: the VM ran past --timeout ${TIMEOUT_S} s and was killed (exit status $rc)" ;;
  *) log "FAILED: exit status $rc ($((SECONDS - t0)) s)" ;;
esac
exit $rc
