//! `gatemesh`: the operator's command line (see `gatemesh --help`). All
//! behaviour lives in the `gatemesh-cli` crate.

use std::process::ExitCode;

use gatemesh_cli::{Cli, Parser};
use gatemesh_runtime::telemetry::TelemetryConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Spans go to the collector when the standard OTEL_* variables say so;
    // stderr stays the one-line errors'.
    let telemetry = match TelemetryConfig::from_env("gatemesh")
        .and_then(|config| gatemesh_runtime::telemetry::init_export_only(&config))
    {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = gatemesh_cli::run(cli, &mut std::io::stdout().lock()).await;
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", gatemesh_cli::error_line(&e));
            ExitCode::from(gatemesh_cli::exit_code(&e))
        }
    }
}
