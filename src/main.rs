//! The `rpatch` command-line tool; see `cli` for the commands and `rpatch` (the library) for the
//! operations.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => std::process::ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("rpatch: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
