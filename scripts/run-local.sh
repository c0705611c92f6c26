#!/usr/bin/env bash
# `make run`: starts pgwarden in the foreground on a local PGDATA, as a container would.
# Ctrl-C stops it (fast shutdown); running it again keeps the data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/pgwarden"
dir="${PGWARDEN_RUN_DIR:-$root/.run}"
# As root, postgres runs as the postgres user, which must be able to reach the data.
if [[ $(id -u) -eq 0 ]] && ! su -s /bin/sh postgres -c "test -x '$(dirname "$dir")'" 2>/dev/null; then
  dir="/var/tmp/pgwarden-run"
fi
mkdir -p "$dir"
chmod 755 "$dir"
if [[ ! -s "$dir/password" ]]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/password")
fi
export PGDATA="${PGDATA:-$dir/data}"
export PGPORT="${PGPORT:-55432}"
export POSTGRES_PASSWORD_FILE="$dir/password"
export PGWARDEN_SOCKET_DIR="${PGWARDEN_SOCKET_DIR:-$dir/sock}"
export PGWARDEN_HTTP_ADDR="${PGWARDEN_HTTP_ADDR:-127.0.0.1:8008}"
export PGWARDEN_INITDB_DIR="${PGWARDEN_INITDB_DIR:-$dir/initdb.d}"
export PGWARDEN_NAME="${PGWARDEN_NAME:-local}"
# Archive WAL to a local directory unless an archive (S3 or other) is configured.
if [[ -z "${PGWARDEN_ARCHIVE_URL:-}" ]]; then
  mkdir -p "$dir/archive"
  [[ $(id -u) -eq 0 ]] && chown postgres: "$dir/archive"
  export PGWARDEN_ARCHIVE_URL="file://$dir/archive"
fi
pw=$(cat "$dir/password")
cat <<MSG
pgwarden: PGDATA=$PGDATA
  connect:  psql "postgresql://postgres:$pw@127.0.0.1:$PGPORT/postgres"
  probes:   curl -i http://$PGWARDEN_HTTP_ADDR/readyz
  status:   curl -s http://$PGWARDEN_HTTP_ADDR/status   (or: PGWARDEN_SOCKET_DIR=$PGWARDEN_SOCKET_DIR $bin status)
  archive:  $PGWARDEN_ARCHIVE_URL
  stop:     Ctrl-C
MSG
exec "$bin" run
