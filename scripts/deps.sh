#!/usr/bin/env bash
# Installs what building, testing, the demo and the benchmarks need, from Debian's packages,
# without prompts. Does nothing when everything is already there, so `make test` can call it
# every time. Usage: scripts/deps.sh [build|test|bench|fuzz|all]   (default: test)
set -euo pipefail

build_pkgs="gcc make pkg-config libssl-dev libuv1-dev libconfig-dev libjemalloc-dev libcurl4-openssl-dev libjansson-dev openssl"
test_pkgs="$build_pkgs curl python3 swaks libnet-ssleay-perl testssl.sh procps iproute2 dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix valgrind clang-14 libclang-rt-14-dev llvm-14 man-db hitch haproxy stunnel4 util-linux pebble"
bench_pkgs="$test_pkgs hitch haproxy stunnel4 util-linux"
fuzz_pkgs="$build_pkgs clang-14 libclang-rt-14-dev llvm-14"
audit_pkgs="$test_pkgs testssl.sh"
# A real MTA-STS client (mta-sts-query) and a mock DNS (pebble-challtestsrv) for client setup.
test_pkgs="$test_pkgs postfix-mta-sts-resolver pebble"
# A second TLS stack for the record layer's interop tests (issue 14): gnutls-cli.
test_pkgs="$test_pkgs gnutls-bin"

case "${1:-test}" in
  build) want=$build_pkgs ;;
  test)  want=$test_pkgs ;;
  bench) want=$bench_pkgs ;;
  fuzz)  want=$fuzz_pkgs ;;
  audit) want=$audit_pkgs ;;
  all)   want="$bench_pkgs $fuzz_pkgs testssl.sh" ;;
  *) echo "usage: $0 [build|test|bench|fuzz|audit|all]" >&2; exit 2 ;;
esac

missing=()
for p in $want; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# Postfix asks how to configure itself; the tests give it a private config, so say "none".
echo "postfix postfix/main_mailer_type select No configuration" | $sudo debconf-set-selections
apt_opts=(-o DPkg::Lock::Timeout=600 -y -q --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists at all: fetch them first instead of failing once.
if ! compgen -G "/var/lib/apt/lists/*_Packages" > /dev/null; then
  $sudo apt-get -o DPkg::Lock::Timeout=600 -q update
fi
if ! $sudo apt-get "${apt_opts[@]}" install "${missing[@]}"; then
  $sudo apt-get -o DPkg::Lock::Timeout=600 -q update
  $sudo apt-get "${apt_opts[@]}" install "${missing[@]}"
fi
