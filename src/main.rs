//! The pgwarden binary: parse, set up logging, dispatch.

use clap::Parser;

fn main() {
    let argv = pgwarden::entrypoint::normalize(std::env::args_os().collect());
    let cli = pgwarden::cli::Cli::parse_from(argv);
    match cli.command {
        // Its stdout is the drill's result.
        pgwarden::cli::Command::RestoreDrill(_) => pgwarden::logging::init_stderr(),
        _ => pgwarden::logging::init(),
    }
    std::process::exit(pgwarden::cli::dispatch(cli));
}
