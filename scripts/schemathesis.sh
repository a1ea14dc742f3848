#!/usr/bin/env bash
# Property-based API check: schemathesis generates requests from /openapi.json and
# checks that no response is a 5xx and every response matches the spec.
# Uses the debug binary that `cargo test` builds; PostgreSQL at TEST_DATABASE_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
base_url="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/tally_test}"
db_url="${base_url%/*}/tally_schemathesis"
python3 -c 'import schemathesis' 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
psql "${base_url%/*}/postgres" -qc 'DROP DATABASE IF EXISTS tally_schemathesis' >/dev/null
psql "${base_url%/*}/postgres" -qc 'CREATE DATABASE tally_schemathesis' >/dev/null
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
[ -x target/debug/tally ] || cargo build
key_and_hash="$(target/debug/tally key new)"
key="$(sed -n 's/^key: *//p' <<<"$key_and_hash")"
hash="$(sed -n 's/^hash: *//p' <<<"$key_and_hash")"
TALLY_API_KEY_HASHES="$hash" DATABASE_URL="$db_url" STORAGE_URL="$work/uploads" TALLY_BIND="127.0.0.1:$port" \
    WORKER_POLL_INTERVAL_MS=200 RUST_LOG=warn target/debug/tally serve > "$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.1
done
schemathesis --config-file tests/schemathesis/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
    --phases "${SCHEMATHESIS_PHASES:-examples,coverage,fuzzing,stateful}" \
    --header "Authorization: Bearer $key" \
    --max-examples "$examples" \
    --seed 1 \
    --no-color
