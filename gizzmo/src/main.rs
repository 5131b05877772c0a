//! `gizzmo`: Gizzard's admin command line. Parses the flags and runs [`gizzmo::run`]; an error
//! is printed as `error: ...` with its causes and exits with status 1.

use std::process::ExitCode;

use clap::Parser;
use gizzmo::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    daemon::exit(gizzmo::run(cli, &mut stdout).await)
}
