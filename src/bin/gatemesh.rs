//! `gatemesh`: the operator's command line (see `gatemesh --help`). All
//! behaviour lives in the `gatemesh-cli` crate.

use std::process::ExitCode;

use gatemesh_cli::{Cli, Parser};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match gatemesh_cli::run(cli, &mut std::io::stdout().lock()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gatemesh_cli::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
