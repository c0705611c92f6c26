//! `make bench`: pgwarden's figures next to the reference tools', measured in one run on
//! the same data. Prints a report; asserts nothing.
//!
//! Usage: `cargo run --release --example bench -- [startup|replica|wal|backup|incremental|delta|ha|all|wal-push|wal-daemon]`

mod backup;
mod delta;
mod ha;
mod harness;
mod incremental;
mod pgbackrest;
mod replica;
mod startup;
mod wal;

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".to_owned());
    let bin =
        std::env::var("PGWARDEN_BIN").unwrap_or_else(|_| "target/release/pgwarden".to_owned());
    let bin = std::fs::canonicalize(&bin)
        .unwrap_or_else(|e| panic!("{bin}: {e}; run `make build` first"));
    println!("# pgwarden benchmark ({})", harness::machine());
    if which == "all" || which == "startup" {
        startup::run(&bin);
    }
    if which == "all" || which == "replica" {
        replica::run(&bin);
    }
    if which == "all" || which == "wal" {
        wal::run(&bin);
    }
    if which == "all" || which == "backup" {
        backup::run(&bin);
    }
    if which == "all" || which == "incremental" {
        incremental::run(&bin);
    }
    if which == "all" || which == "delta" {
        delta::run(&bin);
    }
    if which == "all" || which == "ha" {
        ha::run(&bin);
    }
    if which == "wal-push" {
        wal::run_push(&bin);
    }
    if which == "wal-daemon" {
        wal::run_daemon(&bin);
    }
}
