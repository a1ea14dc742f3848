# Tally — the commands you need.
#   make run    build and start the service (starts a local PostgreSQL if none answers)
#   make test   run every test (needs PostgreSQL; see scripts/test-services.sh)

SHELL := /bin/bash
PG_PORT ?= 5432
DATABASE_URL ?= postgres://postgres@127.0.0.1:$(PG_PORT)/tally
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:$(PG_PORT)/tally_test
export RUST_BACKTRACE ?= 1

.PHONY: run test build release openapi fmt lint bench bench-sum bench-e2e db services clean

run: release
	@url="$$(scripts/local-postgres.sh "$(DATABASE_URL)")" && \
	echo "Swagger UI: http://$${TALLY_BIND:-127.0.0.1:8080}/docs" && \
	DATABASE_URL="$$url" ./target/release/tally serve

build:
	cargo build

release:
	cargo build --release

# PostgreSQL at DATABASE_URL, or a project-local cluster under .data/ when none answers.
db:
	@scripts/local-postgres.sh "$(DATABASE_URL)"

# Test servers that run beside PostgreSQL (SMTP, S3-compatible).
services:
	@scripts/test-services.sh

test: services
	@scripts/local-postgres.sh "$(TEST_DATABASE_URL)" >/dev/null
	DATABASE_URL="$(TEST_DATABASE_URL)" cargo test --lib --bins --tests -- --test-threads 4
	TEST_DATABASE_URL="$(TEST_DATABASE_URL)" scripts/schemathesis.sh

openapi:
	cargo run -q -- openapi > openapi/openapi.json

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

bench: bench-sum

# MB/s of `tally sum` on 1M- and 10M-row files, beside cat and wc -l.
bench-sum: release
	scripts/bench-sum.sh

# The end-to-end matrix (local folder and S3), written to docs/benchmarks.md.
bench-e2e: release services
	python3 scripts/bench_e2e.py

clean:
	cargo clean
