#!/usr/bin/env bash
# `make fresh-check`: the README's two commands as most people first run them, on a new Debian 12
# with the clone in /root. Builds a fresh `debootstrap --variant=minbase bookworm` chroot (its
# `/` 0755, its /root 0700 as Debian makes it), `git clone`s the committed branch into
# CHROOT/root/mailsnid, and runs inside it, as root, with a clean environment:
#   1. apt-get update && apt-get install make   (a minimal image lacks make; README says so)
#   2. make demo-check                          (scripts/demo.sh --check)
#   3. make test
# and prints each step's result and time. Not part of `make test` (it takes a long while).
#
#   tests/fresh/chroot_check.sh [--dir DIR] [--repo PATH] [--branch NAME] [--mirror URL]
#                               [--steps "demo test"] [--keep]
#     --dir     where the chroot goes (default /var/tmp/mailsnid-fresh); an earlier one made by
#               this script is unmounted and removed first
#     --repo    the repository to clone (default: the one this script is in)
#     --branch  what to clone (default: its current branch); only committed work is tested
#     --mirror  Debian mirror for debootstrap and the chroot's apt (default: the host's, from
#               /etc/apt/sources.list*)
#     --steps   which of demo, test to run (default both)
#     --keep    leave the chroot (unmounted) for a look afterwards
# Logs: DIR.logs/ (outside the chroot, kept). Needs root, debootstrap (installed if missing),
# network access to the mirror. The chroot shares the host's network: its tests pick free ports.
# Services that Debian's packages would start (Postfix, Dovecot, haproxy...) are not started
# inside the chroot (policy-rc.d), as in container images; the tests run their own instances.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DIR=/var/tmp/mailsnid-fresh
REPO=$(git -C "$here" rev-parse --show-toplevel)
BRANCH=""
MIRROR=""
STEPS="demo test"
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=$2; shift 2 ;;
    --repo) REPO=$2; shift 2 ;;
    --branch) BRANCH=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--dir DIR] [--repo PATH] [--branch NAME] [--mirror URL] [--steps \"demo test\"] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "fresh-check: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
DIR=$(realpath -m "$DIR")
case "$DIR" in /|/root|/tmp|/var|/var/tmp|/home|"") echo "fresh-check: refusing --dir $DIR" >&2; exit 2 ;; esac
[ -n "$BRANCH" ] || BRANCH=$(git -C "$REPO" symbolic-ref --quiet --short HEAD || git -C "$REPO" rev-parse HEAD)
COMMIT=$(git -C "$REPO" rev-parse "$BRANCH")
LOGS=$DIR.logs
MARK=.mailsnid-fresh-check

# The host's Debian mirror (deb822 .sources or one-line sources.list), security archive beside it.
host_uris() {
  { grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
    grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'; } || true
}
[ -n "$MIRROR" ] || MIRROR=$(host_uris | grep -E '/debian/?$' | head -n1)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
SECURITY=$(host_uris | grep -E '/debian-security/?$' | head -n1 || true)

log() { echo "fresh-check: $*" >&2; }

# Mount points under DIR, deepest first.
mounts_under() {
  awk -v d="$DIR" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

# Processes whose root is the chroot (a daemon a test left behind would keep mounts busy).
chroot_pids() {
  local p
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$DIR" ] && echo "${p#/proc/}"
  done
  return 0
}

teardown() {
  local pids m
  pids=$(chroot_pids)
  if [ -n "$pids" ]; then
    log "stopping processes left in the chroot: $(echo $pids)"
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    pids=$(chroot_pids)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  for m in $(mounts_under); do umount "$m" 2>/dev/null || umount -l "$m"; done
}

remove_chroot() {
  [ -e "$DIR" ] || return 0
  [ -e "$DIR/$MARK" ] || { log "$DIR exists and was not made by this script; not touching it"; exit 2; }
  teardown
  # Never delete through a mount: a bind mount left behind would take the host's files with it.
  if [ -n "$(mounts_under)" ]; then log "mounts still under $DIR: $(mounts_under | tr '\n' ' ')"; exit 1; fi
  rm -rf --one-file-system "$DIR"
}

finish() {
  local rc=$?
  teardown
  if [ "$KEEP" = 0 ] && [ -e "$DIR/$MARK" ] && [ -z "$(mounts_under)" ]; then
    rm -rf --one-file-system "$DIR"
  fi
  exit $rc
}

command -v debootstrap >/dev/null || { apt-get -q update && apt-get install -y -q debootstrap; }
remove_chroot
rm -rf "$LOGS"; mkdir -p "$LOGS"
trap finish EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
log "debootstrap --variant=minbase bookworm $DIR $MIRROR (log: $LOGS/debootstrap.log)"
mkdir -p "$DIR"; touch "$DIR/$MARK"
debootstrap --variant=minbase bookworm "$DIR" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1 ||
  { tail -n 20 "$LOGS/debootstrap.log" >&2; exit 1; }
log "debootstrap done in $(( $(date +%s) - t0 )) s"

# What a fresh Debian 12 install has: / 0755, /root 0700, the usual archives.
chmod 0755 "$DIR"; chmod 0700 "$DIR/root"
{ echo "deb $MIRROR bookworm main"
  echo "deb $MIRROR bookworm-updates main"
  [ -z "$SECURITY" ] || echo "deb $SECURITY bookworm-security main"; } >"$DIR/etc/apt/sources.list"
cp /etc/resolv.conf "$DIR/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$DIR/etc/hosts"
printf '#!/bin/sh\n# fresh-check: no service starts inside the chroot\nexit 101\n' >"$DIR/usr/sbin/policy-rc.d"
chmod 0755 "$DIR/usr/sbin/policy-rc.d"

log "git clone $REPO ($BRANCH, $COMMIT) -> $DIR/root/mailsnid"
git clone -q --no-hardlinks --branch "$BRANCH" "$REPO" "$DIR/root/mailsnid" 2>"$LOGS/clone.log" ||
  git clone -q --no-hardlinks "$REPO" "$DIR/root/mailsnid"
git -C "$DIR/root/mailsnid" checkout -q "$COMMIT"
chown -R 0:0 "$DIR/root/mailsnid"
log "modes: $(stat -c '%n %a' "$DIR" "$DIR/root" | tr '\n' ' ')"

# /proc, /sys, and a private /dev (tmpfs with the usual nodes, its own devpts and /dev/shm):
# nothing bind-mounted from the host, so nothing of the host's can be lost by removing DIR.
# The chroot's / is made a mount point of its own, as / is on any machine: `ip netns` and
# `unshare -m` change mount propagation at /, which a plain directory refuses.
mount --bind "$DIR" "$DIR"
mount -t proc proc "$DIR/proc"
mount -t sysfs -o ro sysfs "$DIR/sys"
mount -t tmpfs -o mode=0755,size=64k tmpfs "$DIR/dev"
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
  set -- $n; mknod -m 0666 "$DIR/dev/$1" c "$2" "$3"
done
mkdir -p "$DIR/dev/pts" "$DIR/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$DIR/dev/pts"
ln -s pts/ptmx "$DIR/dev/ptmx"
mount -t tmpfs -o mode=1777 tmpfs "$DIR/dev/shm"
ln -s /proc/self/fd "$DIR/dev/fd"
ln -s /proc/self/fd/0 "$DIR/dev/stdin"; ln -s /proc/self/fd/1 "$DIR/dev/stdout"; ln -s /proc/self/fd/2 "$DIR/dev/stderr"

# A root login's environment, nothing of ours.
in_chroot() {
  chroot "$DIR" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "$1" </dev/null
}

results=()
failed=0
step() {   # step NAME LOGFILE COMMAND
  local name=$1 logf=$LOGS/$2 cmd=$3 s rc
  log "$name: running \`$cmd\` in the chroot (log: $logf)"
  s=$(date +%s)
  set +e; in_chroot "$cmd" >"$logf" 2>&1; rc=$?; set -e
  local took=$(( $(date +%s) - s ))
  if [ $rc -eq 0 ]; then
    results+=("PASSED  $name ($took s)")
  else
    results+=("FAILED  $name (exit $rc after $took s; $logf)")
    failed=1
    tail -n 40 "$logf" | sed 's/^/  | /' >&2
  fi
  log "${results[-1]}"
  return $rc
}

step "apt-get install make" apt-make.log 'apt-get -q update && apt-get install -y -q make' || exit 1
for s in $STEPS; do
  case "$s" in
    demo) step "make demo-check (scripts/demo.sh --check, clone in /root)" demo-check.log \
            'cd /root/mailsnid && make demo-check' || true ;;
    test) step "make test (clone in /root)" make-test.log 'cd /root/mailsnid && make test' || true ;;
    *) log "unknown step $s"; failed=1 ;;
  esac
done

echo
echo "fresh-check: Debian bookworm minbase chroot $DIR (/ $(stat -c %a "$DIR"), /root $(stat -c %a "$DIR/root")),"
echo "fresh-check: clone of $REPO at $BRANCH ($COMMIT) in /root/mailsnid, run as root"
for r in "${results[@]}"; do echo "fresh-check: $r"; done
echo "fresh-check: total $(( $(date +%s) - t0 )) s; logs in $LOGS"
exit $failed
