#!/usr/bin/env bash
# `make bench`: builds the benchmark and runs every section. Figures, not thresholds.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --example bench
exec target/release/examples/bench "${@:-all}"
