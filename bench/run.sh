#!/usr/bin/env bash
# The benchmark: provisions what it needs (idempotent), builds sluice and the harness in release mode, and
# prints the figures. Arguments go to the harness, e.g. `bench/run.sh --rows 200000`.
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE_TANSU="$(bash scripts/provision.sh | tail -n 1)"
export SLUICE_TANSU
cargo build --release --locked -p sluice -p sluice-bench
exec target/release/sluice-bench --sluice target/release/sluice "$@"
