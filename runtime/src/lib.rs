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
