#!/usr/bin/env bash
# Makes the one certificate every proxy in the benchmark serves: ECDSA P-256, self-signed, for
# mail.bench.test and *.bench.test. Writes DIR/cert.pem, DIR/key.pem and DIR/combined.pem (cert
# then key: hitch's pem-file and haproxy's crt want both in one file).
# Usage: bench/certs.sh DIR
set -euo pipefail
dir=${1:?usage: $0 DIR}
mkdir -p "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=mail.bench.test" -addext "subjectAltName=DNS:mail.bench.test,DNS:*.bench.test" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
cat "$dir/cert.pem" "$dir/key.pem" > "$dir/combined.pem"
# hitch's workers run as nobody and stunnel may re-read the key: make them readable to both.
chmod 644 "$dir/cert.pem" "$dir/key.pem" "$dir/combined.pem"
