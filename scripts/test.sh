#!/usr/bin/env bash
# The test command: provisions what the tests need (idempotent), then runs every test of the workspace.
# The integration tests start their own PostgreSQL clusters, tansu brokers and registry test doubles on free
# 127.0.0.1 ports and stop them afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE_TANSU="$(bash scripts/provision.sh | tail -n 1)"
export SLUICE_TANSU

# Formatting and lints first: a rustfmt difference or any clippy warning fails the run before the long tests.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Two cores: two test threads keep the end-to-end tests (each with its own PostgreSQL and broker) from
# starving one another.
cargo test --workspace --locked -- --test-threads="${SLUICE_TEST_THREADS:-2}" "$@"

# The fuzz targets (fuzz/) still build and each still passes its committed corpus: a few seconds per target,
# so that a decoder change that breaks a target or brings back a fixed crash fails here (fuzz/README.md).
bash fuzz/run.sh check
