#!/usr/bin/env bash
# `make test`: the whole suite on one PostgreSQL major and, at the same time, the
# versioned tests (what differs by major) on the other; see the Makefile.
#
#   bash scripts/test-matrix.sh FULL OTHER TEST...
#
# Both runs share one build, made first. They run side by side because most of a test
# waits (for postgres, etcd, an archive), so two runs fill the cores one leaves idle;
# the HA tests still take turns across both (tests/common/ha.rs, one_at_a_time). The
# OTHER run's lines are prefixed with "[pgOTHER]". Exits non-zero if either run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
full="${1:?usage: test-matrix.sh FULL OTHER TEST...}"
other="${2:?usage: test-matrix.sh FULL OTHER TEST...}"
shift 2
cargo="${CARGO:-cargo}"
full_bindir=$(bash scripts/pg-bindir.sh "$full") || exit 1
other_bindir=$(bash scripts/pg-bindir.sh "$other") || exit 1
versioned=()
for t in "$@"; do versioned+=(--test "$t"); done
[[ ${#versioned[@]} -gt 0 ]] || { echo "test-matrix.sh: no versioned tests named" >&2; exit 2; }

# One build for both runs (the binaries do not depend on the major; the tests read
# PGWARDEN_PG_BINDIR when they run).
"$cargo" test --locked --all-targets --no-run || exit 1

# Each run takes its own half of the tests' ports (tests/common/mod.rs, free_port).
# The background run is a process group of its own (set -m), so that a script stopped
# midway (a CI timeout, Ctrl-C) takes all of it along.
echo "== the versioned tests on PostgreSQL $other ($other_bindir), beside the whole suite"
set -m
(
  PGWARDEN_TEST_PORTS=high PGWARDEN_PG_BINDIR=$other_bindir \
    "$cargo" test --locked "${versioned[@]}" 2>&1 | sed -u "s/^/[pg$other] /"
  exit "${PIPESTATUS[0]}"
) &
other_pid=$!
set +m
trap 'kill -- -"$other_pid" 2>/dev/null' EXIT
trap 'exit 143' TERM INT

echo "== the whole suite on PostgreSQL $full ($full_bindir)"
PGWARDEN_TEST_PORTS=low PGWARDEN_PG_BINDIR=$full_bindir "$cargo" test --locked --all-targets
full_rc=$?
wait "$other_pid"
other_rc=$?
# Ended: its group is gone, and its number may be another's.
trap - EXIT

echo "== PostgreSQL $full: $([[ $full_rc -eq 0 ]] && echo passed || echo "FAILED ($full_rc)"); PostgreSQL $other: $([[ $other_rc -eq 0 ]] && echo passed || echo "FAILED ($other_rc)")"
[[ $full_rc -eq 0 && $other_rc -eq 0 ]]
