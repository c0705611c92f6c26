# pgwarden: see README.md. Every target installs what it is missing first.
CARGO ?= cargo

.PHONY: all build deps run test bench lint clean

all: build

deps:
	bash scripts/install-deps.sh

build:
	$(CARGO) build --release --locked

## Set up and run pgwarden locally, in the foreground, on a local PGDATA.
run: deps build
	bash scripts/run-local.sh

## Run the whole test suite against real PostgreSQL.
test: deps
	bash scripts/install-garage.sh
	$(CARGO) test --locked --all-targets

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
