//! `tracing` output for the binaries: `RUST_LOG` filters, `format` picks
//! human-readable text or JSON lines ([`json`]); [`limited!`](crate::limited)
//! rate-limits the lines an outsider can repeat at will.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::ConfigError;

pub mod json;
mod limit;

pub use json::{JsonLayer, list};
pub use limit::{BURST, Limit, PERIOD};

#[doc(hidden)]
pub use tracing as __tracing;

/// The filter `RUST_LOG` names; `info` when unset or empty. A directive
/// that does not parse is an error naming `RUST_LOG`, never a silent
/// fallback.
pub fn filter(rust_log: Option<&str>) -> Result<EnvFilter, ConfigError> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(EnvFilter::new("info")),
        Some(directives) => EnvFilter::builder()
            .parse(directives)
            .map_err(|e| ConfigError(format!("RUST_LOG={directives}: {e}"))),
    }
}

/// A layer on a `tracing_subscriber` registry.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The log output as a layer, filtered by `RUST_LOG` (`rust_log`):
/// JSON lines on stderr when `format` is `"json"`, text otherwise, coloured
/// only when stderr is a terminal so files and the journal hold plain text.
pub fn layer<S>(format: Option<&str>, rust_log: Option<&str>) -> Result<BoxedLayer<S>, ConfigError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let filter = filter(rust_log)?;
    Ok(if format == Some("json") {
        JsonLayer::new(std::io::stderr).with_filter(filter).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    })
}

/// Installs the global subscriber with [`layer`]'s output.
pub fn init(format: Option<&str>, rust_log: Option<&str>) -> Result<(), ConfigError> {
    // A subscriber already installed (tests, embedding) is fine.
    let _ = tracing_subscriber::registry()
        .with(layer(format, rust_log)?)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_rust_log_is_an_error_naming_it() {
        let e = filter(Some("info,gatemesh=loud")).unwrap_err().to_string();
        assert!(e.starts_with("RUST_LOG=info,gatemesh=loud: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
        filter(Some("warn,gatemesh_gateway=debug")).unwrap();
        assert_eq!(filter(Some("")).unwrap().to_string(), "info");
        assert_eq!(filter(None).unwrap().to_string(), "info");
    }
}
