# pgwarden: see README.md. Every target installs what it is missing first.
CARGO ?= cargo

.PHONY: all build deps run test chaos bench lint clean

all: build

deps:
	bash scripts/install-deps.sh

build:
	$(CARGO) build --release --locked

## Set up and run pgwarden locally, in the foreground, on a local PGDATA.
run: deps build
	bash scripts/run-local.sh

# The major matrix (docs/versions.md): the whole suite on PG_FULL, the Dockerfile's
# default; on PG_OTHER, Debian 12's, every test binary that touches what differs by
# major (initdb and bootstrap, adoption and the major check, replicas and rewind, WAL
# page headers, base backups and restore, barman-cloud, metrics and /status, HA
# failover). Both run at once (scripts/test-matrix.sh); PGWARDEN_PG_BINDIR selects
# the binaries of a run. archive_safety is not here: what it tests does not differ by
# major (each major's WAL is checked on its way in and out by wal, restore, replica).
PG_FULL ?= 18
PG_OTHER ?= 15
VERSIONED_TESTS ?= bootstrap primary bad_input official_image replica rewind wal \
  backup restore interop observability ha_failover ha_restore backup_incremental

## Run the test suite against real PostgreSQL: all of it on 18, the versioned part on 15.
test: deps
	bash scripts/install-garage.sh
	CARGO=$(CARGO) bash scripts/test-matrix.sh $(PG_FULL) $(PG_OTHER) $(VERSIONED_TESTS)

## The HA fault harness (tests/chaos.rs) on a longer schedule than `make test`'s:
## CHAOS_SEED, CHAOS_FAULTS (default 40 here) and CHAOS_SYNC (on, strict, quorum, off).
chaos: deps
	bindir=$$(bash scripts/pg-bindir.sh $(PG_FULL)) && \
	  CHAOS_FAULTS=$${CHAOS_FAULTS:-40} PGWARDEN_PG_BINDIR=$$bindir \
	  $(CARGO) test --locked --test chaos -- --nocapture

## Measure pgwarden against the reference tools; prints figures, asserts nothing.
bench: build
	bash scripts/install-deps.sh --bench
	bash scripts/install-garage.sh
	bash bench/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
