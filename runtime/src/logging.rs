//! `tracing` output for the binaries: `RUST_LOG` filters, `format` picks
//! human-readable text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::ConfigError;

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

/// Installs the global subscriber. `format` is `"json"` or anything else
/// for text; `rust_log` is the value of `RUST_LOG`. Text gets colour only
/// when stderr is a terminal, so files and the journal hold plain text.
pub fn init(format: Option<&str>, rust_log: Option<&str>) -> Result<(), ConfigError> {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log)?)
        .with_writer(std::io::stderr);
    let result = if format == Some("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A subscriber already installed (tests, embedding) is fine.
    let _ = result;
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
