//! OpenTelemetry export of spans over OTLP/gRPC, beside the log output.
//!
//! Off by default. The standard variables switch it on, the same in both
//! binaries and the CLI:
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`):
//!   the collector's OTLP/gRPC address, e.g. `http://127.0.0.1:4317`; set
//!   and not empty, spans are exported;
//! - `OTEL_SERVICE_NAME`: the service name spans carry (default: the
//!   binary's name);
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: off whatever
//!   the endpoint says;
//! - the SDK reads the rest itself: `OTEL_BSP_SCHEDULE_DELAY` (ms between
//!   batches, 5000 by default), `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! When on, [`gatemesh_handlers::trace::set_enabled`] tells the mesh to make
//! its per-call spans and carry their context in request metadata. When
//! off, nothing here is installed and logging is exactly
//! [`crate::logging::init`]'s.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::ConfigError;

/// What the standard `OTEL_*` variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Where spans go; `None`: export off.
    pub endpoint: Option<String>,
    pub service_name: String,
}

impl TelemetryConfig {
    /// Reads the variables in `vars`; `service` names the spans when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>, service: &str) -> Self {
        let mut endpoint = None;
        let mut traces_endpoint = None;
        let mut service_name = None;
        let mut disabled = false;
        for (key, value) in vars {
            let value = value.trim().to_string();
            if value.is_empty() {
                continue;
            }
            match key.as_str() {
                "OTEL_EXPORTER_OTLP_ENDPOINT" => endpoint = Some(value),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => traces_endpoint = Some(value),
                "OTEL_SERVICE_NAME" => service_name = Some(value),
                "OTEL_SDK_DISABLED" => disabled |= value.eq_ignore_ascii_case("true"),
                "OTEL_TRACES_EXPORTER" => disabled |= value.eq_ignore_ascii_case("none"),
                _ => {}
            }
        }
        Self {
            endpoint: traces_endpoint.or(endpoint).filter(|_| !disabled),
            service_name: service_name.unwrap_or_else(|| service.to_string()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }
}

/// The running export; [`Telemetry::shutdown`] flushes what is left.
#[derive(Debug, Default)]
#[must_use = "spans still buffered are lost unless it is shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops. Call it before exit:
    /// a process that ends without it loses up to one batch.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        gatemesh_handlers::trace::set_enabled(false);
        // The SDK's shutdown blocks until the batch task (on this runtime)
        // has exported: off the runtime's threads.
        let done = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(Duration::from_secs(10), done).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("telemetry: shutdown: {e}"),
            Ok(Err(e)) => eprintln!("telemetry: shutdown: {e}"),
            Err(_) => eprintln!("telemetry: shutdown: no answer from the collector in 10 s"),
        }
    }
}

/// Crates whose own spans never go to the collector: the exporter's
/// transport (exporting them would export the export, forever) and the
/// per-frame plumbing underneath.
const NOT_EXPORTED: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tonic",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
];

/// Installs logging ([`crate::logging`]'s format and `RUST_LOG` filter)
/// and, when `config` asks for it, span export. Call it inside the Tokio
/// runtime: the exporter runs on it.
pub fn init(
    format: Option<&str>,
    rust_log: Option<&str>,
    config: &TelemetryConfig,
) -> Result<Telemetry, ConfigError> {
    if !config.enabled() {
        crate::logging::init(format, rust_log)?;
        return Ok(Telemetry::default());
    }
    let fmt = fmt_layer(format, rust_log)?;
    let provider = provider(config)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gatemesh"))
        .with_filter(otel_filter());
    // A subscriber already installed (tests, embedding) is fine: its
    // owner decides what is recorded.
    if tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .is_ok()
    {
        gatemesh_handlers::trace::set_enabled(true);
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// [`init`] as a binary starts it, from the process environment:
/// `RUST_LOG`, the standard `OTEL_*` variables, and the binary's own log
/// format setting; `binary` names the service in exported spans.
pub fn init_from_env(binary: &str, format: Option<&str>) -> Result<Telemetry, ConfigError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    init(
        format,
        rust_log.as_deref(),
        &TelemetryConfig::from_vars(std::env::vars(), binary),
    )
}

/// Span export only, no log output: for the CLI, whose stderr belongs to
/// its one-line errors. `Telemetry::default()` when `config` is off.
pub fn init_export_only(config: &TelemetryConfig) -> Result<Telemetry, ConfigError> {
    if !config.enabled() {
        return Ok(Telemetry::default());
    }
    let provider = provider(config)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gatemesh"))
        .with_filter(otel_filter());
    if tracing_subscriber::registry().with(otel).try_init().is_ok() {
        gatemesh_handlers::trace::set_enabled(true);
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

fn otel_filter() -> Targets {
    NOT_EXPORTED.iter().fold(
        Targets::new().with_default(LevelFilter::INFO),
        |targets, target| targets.with_target(*target, LevelFilter::OFF),
    )
}

fn provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, ConfigError> {
    // The exporter reads the endpoint (and headers, timeout) from the
    // standard variables itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| {
            ConfigError(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT={}: {e}",
                config.endpoint.as_deref().unwrap_or_default()
            ))
        })?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .build())
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// [`crate::logging::init`]'s output, as a layer beside the exporter's.
fn fmt_layer(format: Option<&str>, rust_log: Option<&str>) -> Result<BoxedLayer, ConfigError> {
    use std::io::IsTerminal as _;
    let filter = crate::logging::filter(rust_log)?;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    Ok(if format == Some("json") {
        layer.json().flatten_event(true).with_filter(filter).boxed()
    } else {
        layer
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_standard_variables_switch_export_on_and_off() {
        let off = TelemetryConfig::from_vars(vars(&[("OTEL_SERVICE_NAME", "x")]), "vps-gateway");
        assert!(!off.enabled());
        let empty = vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]);
        assert!(!TelemetryConfig::from_vars(empty, "vps-gateway").enabled());
        let on = TelemetryConfig::from_vars(
            vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]),
            "vps-gateway",
        );
        assert_eq!(on.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(on.service_name, "vps-gateway");
        let named = TelemetryConfig::from_vars(
            vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
                ("OTEL_SERVICE_NAME", "gw-node-1"),
            ]),
            "vps-gateway",
        );
        assert_eq!(named.endpoint.as_deref(), Some("http://b:4317"));
        assert_eq!(named.service_name, "gw-node-1");
        for switch in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let disabled = TelemetryConfig::from_vars(
                vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), switch]),
                "vps-gateway",
            );
            assert!(!disabled.enabled(), "{switch:?}");
        }
    }
}
