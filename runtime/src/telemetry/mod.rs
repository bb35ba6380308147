//! OpenTelemetry export of spans over OTLP (gRPC or HTTP/protobuf),
//! beside the log output.
//!
//! Off by default. The standard variables switch it on, the same in both
//! binaries and the CLI ([`TelemetryConfig::from_vars`]):
//!
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`):
//!   the collector, e.g. `http://127.0.0.1:4317`; set and not empty, spans
//!   are exported. `https://` is TLS, trusting the system roots and
//!   `OTEL_EXPORTER_OTLP_CERTIFICATE` (a PEM file of CA certificates);
//! - `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (the default) or
//!   `http/protobuf` (spans POSTed to the endpoint's `/v1/traces`);
//! - `OTEL_SERVICE_NAME`: the service name spans carry (default: the
//!   binary's name); the binaries add `service.instance.id` and the
//!   instance's `deployment.environment` unless `OTEL_RESOURCE_ATTRIBUTES`
//!   sets them;
//! - `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: off whatever
//!   the endpoint says;
//! - `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`,
//!   `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_EXPORT_TIMEOUT`: the
//!   batching ([`batch`]); the exporter reads `OTEL_EXPORTER_OTLP_HEADERS`
//!   and `OTEL_EXPORTER_OTLP_TIMEOUT` itself.
//!
//! Nothing is lost unseen: spans dropped (queue full, export failed, not
//! sent by the shutdown deadline) and failed exports are counted
//! ([`ExportCollector`], in both daemons' `/metrics`) and logged,
//! rate-limited; while exports fail, [`export_problem`] is a `/health`
//! reason. [`Telemetry::shutdown`] sends what is left within
//! [`SHUTDOWN_FLUSH`], whatever the collector does.
//!
//! When on, [`gatemesh_handlers::trace::set_enabled`] tells the mesh to make
//! its per-call spans and carry their context in request metadata. When
//! off, nothing here is installed and logging is exactly
//! [`crate::logging::init`]'s.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::ConfigError;

pub mod batch;
mod config;
mod http;

pub use batch::{ExportCollector, ExportStats, STATS};
pub use config::{BatchSettings, Protocol, SHUTDOWN_FLUSH, TelemetryConfig};

/// Why this process's spans are not reaching the collector, while its
/// last export failed: a `/health` reason for both daemons.
pub fn export_problem() -> Option<String> {
    STATS.problem()
}

/// The running export; [`Telemetry::shutdown`] flushes what is left.
#[derive(Debug, Default)]
#[must_use = "spans still buffered are lost unless it is shut down"]
pub struct Telemetry {
    running: Option<(SdkTracerProvider, batch::Stopper)>,
}

impl Telemetry {
    pub fn enabled(&self) -> bool {
        self.running.is_some()
    }

    /// Exports the spans still buffered, within [`SHUTDOWN_FLUSH`], and
    /// stops. Call it before exit: a process that ends without it loses up
    /// to one batch.
    pub async fn shutdown(self) {
        let Some((provider, stopper)) = self.running else {
            return;
        };
        gatemesh_handlers::trace::set_enabled(false);
        stopper.stop(SHUTDOWN_FLUSH).await;
        // The export task has stopped: this only marks the provider shut.
        let _ = provider.shutdown();
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
    "rustls",
    "tokio_rustls",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry_http",
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
    let fmt = crate::logging::layer(format, rust_log)?;
    let (provider, stopper) = provider(config)?;
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
        running: Some((provider, stopper)),
    })
}

/// [`init`] as a binary starts it: `RUST_LOG` from the process
/// environment, `config` (usually [`TelemetryConfig::from_env`] with the
/// binary's identity) and the binary's own log format setting.
pub fn init_from_env(
    config: &TelemetryConfig,
    format: Option<&str>,
) -> Result<Telemetry, ConfigError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    init(format, rust_log.as_deref(), config)
}

/// Span export only, no log output: for the CLI, whose stderr belongs to
/// its one-line errors. `Telemetry::default()` when `config` is off.
pub fn init_export_only(config: &TelemetryConfig) -> Result<Telemetry, ConfigError> {
    if !config.enabled() {
        return Ok(Telemetry::default());
    }
    let (provider, stopper) = provider(config)?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gatemesh"))
        .with_filter(otel_filter());
    if tracing_subscriber::registry().with(otel).try_init().is_ok() {
        gatemesh_handlers::trace::set_enabled(true);
    }
    Ok(Telemetry {
        running: Some((provider, stopper)),
    })
}

fn otel_filter() -> Targets {
    NOT_EXPORTED.iter().fold(
        Targets::new().with_default(LevelFilter::INFO),
        |targets, target| targets.with_target(*target, LevelFilter::OFF),
    )
}

fn provider(config: &TelemetryConfig) -> Result<(SdkTracerProvider, batch::Stopper), ConfigError> {
    let endpoint = config.endpoint.clone().unwrap_or_default();
    let endpoint_var = "OTEL_EXPORTER_OTLP_ENDPOINT";
    let cert_var = "OTEL_EXPORTER_OTLP_CERTIFICATE";
    let ca_pem = config
        .certificate
        .as_deref()
        .map(|path| crate::pem::certificates(cert_var, path))
        .transpose()?;
    let https = endpoint.starts_with("https://");
    let timeout = config.batch.export_timeout;
    let built = match config.protocol {
        Protocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(timeout);
            if https {
                let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &ca_pem {
                    tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            builder.build()
        }
        Protocol::HttpProtobuf => {
            let tls = http::tls_config(cert_var, ca_pem.as_deref())?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint.clone())
                .with_timeout(timeout)
                .with_http_client(http::HttpClient::new(tls, timeout))
                .build()
        }
    };
    let mut exporter = built.map_err(|e| ConfigError(format!("{endpoint_var}={endpoint}: {e}")))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource_attributes()
                .into_iter()
                .map(|(key, value)| KeyValue::new(key, value)),
        )
        .build();
    exporter.set_resource(&resource);
    let (processor, stopper) = batch::Batcher::start(exporter, config.batch, endpoint, &STATS);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    Ok((provider, stopper))
}
