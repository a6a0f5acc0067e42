//! `hvae`: the host tool. See `hvae --help`.

use clap::Parser;
use hvae_host::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli::run(&args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hvae: error: {}", e.one_line());
            ExitCode::from(e.exit_code())
        }
    }
}
