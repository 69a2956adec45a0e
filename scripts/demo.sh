#!/usr/bin/env bash
# The demo: provisions what it needs (idempotent), builds sluice, and runs a PostgreSQL -> sluice -> broker
# round trip on this machine, printing the decoded events. Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

SLUICE_TANSU="$(bash scripts/provision.sh | tail -n 1)"
export SLUICE_TANSU
cargo build --workspace --locked --bins
exec target/debug/sluice-demo
