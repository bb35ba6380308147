//! Runtime support shared by `vps-gateway` and `vps-service`: what both
//! ends need around the mesh, written once.
//!
//! - [`env`]: typed config from environment variables, with errors that name
//!   the variable: [`env::Env`], one loader for a binary whose settings are
//!   sections owned by the concerns they configure.
//! - [`ops`]: [`ops::OpsSettings`], the operator endpoints' and logs'
//!   settings both binaries read the same way.
//! - [`secret`]: [`Secret`], compared in constant time, never printed.
//! - [`pem`]: TLS certificates and keys read from PEM files, checked at
//!   start so a bad file names its variable.
//! - [`identity`]: who a certificate names: a SPIFFE ID binding an
//!   instance to its environment, or the older DNS-SAN form.
//! - [`reload`]: [`reload::Reloading`], files read again when they change
//!   (rotated certificates), the previous value kept when they do not load.
//! - [`logging`]: `tracing` set up from `RUST_LOG` and a text/json format.
//! - [`telemetry`]: span export over OTLP beside that output, switched on
//!   by the standard `OTEL_*` variables.
//! - [`shutdown`]: a future that resolves on SIGTERM or SIGINT.
//! - [`backoff`]: [`Backoff`], capped exponential delays with full jitter.
//! - [`limits`]: the file-descriptor limit, raised at start and watched.
//! - [`metrics`]: the `/metrics` exposition: format negotiation, process
//!   metrics, `build_info`.
//! - [`http`]: the operator endpoints' HTTP server, with header and idle
//!   deadlines and a connection cap that closes the longest idle
//!   connection to make room.
//! - [`served`]: [`Served`], the counters of the requests an end serves
//!   (the dispatcher's observer), the same on both ends.
//! - [`error_chain`]: an error and all its causes on one line;
//!   [`exit_code`]: how both binaries end on a start-up error.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod env;
pub mod histogram;
pub mod http;
pub mod identity;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod ops;
pub mod pem;
pub mod reload;
pub mod secret;
pub mod served;
pub mod shutdown;
pub mod telemetry;

pub use served::{Served, ServedNames};

pub use backoff::Backoff;
pub use env::ConfigError;
pub use secret::Secret;

/// An error and its causes, `: `-separated, on one line. Transport errors
/// (tonic's, rustls') put the useful part in their sources, which
/// `Display` hides; a cause whose text the chain already ends with (some
/// errors repeat their source's message) is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.replace(['\n', '\r'], " ")
}

/// Ends a binary: on an error, one line `<binary>: <error chain>` on
/// stderr and a failure code; no `Debug` dump, no backtrace.
pub fn exit_code<E>(binary: &str, result: Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + Send + Sync + 'static>,
{
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: {}", error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(text: &'static str, source: Option<E>) -> E {
        E {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn chains_are_one_line_without_repeated_causes() {
        let err = e(
            "transport error",
            Some(e(
                "tcp connect error",
                Some(e(
                    "tcp connect error",
                    Some(e("Connection refused (os error 111)", None)),
                )),
            )),
        );
        assert_eq!(
            error_chain(&err),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        let err = e("bad file: line 1\nline 2", None);
        assert_eq!(error_chain(&err), "bad file: line 1 line 2");
    }
}
