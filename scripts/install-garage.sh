#!/usr/bin/env bash
# Installs Garage, the S3 server the WAL tests run against, into a cache directory
# that later runs reuse (about 15 minutes to build the first time on 2 cores).
set -euo pipefail
root="${PGWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgwarden}/garage"
if [[ -x "$root/bin/garage" ]]; then
  exit 0
fi
echo "building garage into $root (first run only)"
cargo install garage --locked --root "$root" --quiet
