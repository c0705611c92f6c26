#!/usr/bin/env bash
# Installs the Debian packages pgwarden's tests, `make run` and `make bench` need.
# Idempotent and quick when everything is already there.
set -euo pipefail
# libnss-wrapper: the arbitrary-UID test; xz-utils: *.sql.xz init scripts.
packages=(postgresql postgresql-contrib iproute2 barman-cli-cloud prometheus libnss-wrapper xz-utils)
[[ "${1:-}" == "--bench" ]] && packages+=(pgbackrest time)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
