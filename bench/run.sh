#!/usr/bin/env bash
# `make bench`: builds the benchmark and runs every section. Figures, not thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --example bench
# CI and shared machines build elsewhere (CARGO_TARGET_DIR, see .ci/run).
target="${CARGO_TARGET_DIR:-target}"
export PGWARDEN_BIN="${PGWARDEN_BIN:-$target/release/pgwarden}"
exec "$target/release/examples/bench" "${@:-all}"
