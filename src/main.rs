//! The pgwarden binary: parse, set up logging, dispatch.

use clap::Parser;

fn main() {
    let cli = pgwarden::cli::Cli::parse();
    pgwarden::logging::init();
    std::process::exit(pgwarden::cli::dispatch(cli));
}
