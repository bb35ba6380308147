//! Runtime support shared by `vps-gateway` and `vps-service`; nothing here
//! knows about the mesh itself.
//!
//! - [`env`]: typed config from environment variables, with errors that name
//!   the variable.
//! - [`secret`]: [`Secret`], compared in constant time, never printed.
//! - [`pem`]: TLS certificates and keys read from PEM files, checked at
//!   start so a bad file names its variable.
//! - [`logging`]: `tracing` set up from `RUST_LOG` and a text/json format.
//! - [`shutdown`]: a future that resolves on SIGTERM or SIGINT.
//! - [`backoff`]: [`Backoff`], capped exponential delays with full jitter.
//! - [`error_chain`]: an error and all its causes on one line.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod env;
pub mod logging;
pub mod pem;
pub mod secret;
pub mod shutdown;

pub use backoff::Backoff;
pub use env::ConfigError;
pub use secret::Secret;

/// An error and its causes, `: `-separated. Transport errors (tonic's,
/// rustls') put the useful part in their sources, which `Display` hides.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
