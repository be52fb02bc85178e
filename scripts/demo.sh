#!/usr/bin/env bash
# `make demo`: mailsnid in front of real Dovecot and Postfix and a webmail stand-in, with a demo
# CA and certificates for alpha.test (exact names), *.beta.test (wildcard) and mail.hoster.test
# (the default). Prints the commands to try it and stays in the foreground until Ctrl-C.
#
#   scripts/demo.sh            run the demo
#   scripts/demo.sh --check    run it, execute every printed command, report OK/FAIL, stop;
#                              exit 0 only if all passed (what the test suite calls)
#
# Installs missing Debian packages (scripts/deps.sh) and builds first. Needs root for Postfix
# (re-runs the Python part with sudo otherwise). Its files go to a new /tmp/mailsnid-demo-XXXXXX
# (printed; not under the checkout, which Dovecot's and Postfix's users may not reach).
# MAILSNID=path/to/binary uses another build (e.g. build-san/mailsnid) instead of build/mailsnid.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  ""|--check) ;;
  -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

scripts/deps.sh test
echo "demo: building (make)" >&2
make -s

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: Postfix needs root; running the demo with sudo" >&2
  exec sudo --preserve-env=MAILSNID python3 scripts/demo.py "$@"
fi
exec python3 scripts/demo.py "$@"
