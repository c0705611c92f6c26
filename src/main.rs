//! The pgwarden binary: parse, set up logging, dispatch.

use clap::Parser;

fn main() {
    let argv = pgwarden::entrypoint::normalize(std::env::args_os().collect());
    let cli = pgwarden::cli::Cli::parse_from(argv);
    pgwarden::logging::init();
    std::process::exit(pgwarden::cli::dispatch(cli));
}
