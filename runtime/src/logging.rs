//! `tracing` output for the binaries: `RUST_LOG` filters, `format` picks
//! human-readable text or JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `format` is `"json"` or anything else for
/// text; the filter defaults to `info`.
pub fn init(format: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == Some("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    // A subscriber already installed (tests, embedding) is fine.
    let _ = result;
}
