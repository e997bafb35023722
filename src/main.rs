//! The `flatstack` command: parse arguments, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = flatstack::cli::Cli::parse();
    match flatstack::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", flatstack::cli::report(&error));
            ExitCode::from(flatstack::cli::exit_code(&error))
        }
    }
}
