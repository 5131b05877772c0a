//! `gizzmo`: Gizzard's admin command line. Parses the flags and runs
//! [`gizzard::gizzmo::run`]; an error is printed as `error: ...` and exits with status 1.

use std::process::ExitCode;

use clap::Parser;
use gizzard::gizzmo::{self, Cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match gizzmo::run(cli, &mut stdout).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", gizzmo::error_text(&err));
            ExitCode::FAILURE
        }
    }
}
