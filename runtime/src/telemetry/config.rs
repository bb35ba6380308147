//! What the standard `OTEL_*` variables ask for, read once and checked: a
//! bad value stops the binary with the variable's name.

use std::path::PathBuf;
use std::time::Duration;

use crate::ConfigError;

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `grpc`: OTLP/gRPC, usually port 4317.
    #[default]
    Grpc,
    /// `http/protobuf`: OTLP over HTTP, protobuf bodies POSTed to
    /// `/v1/traces`, usually port 4318.
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The batching of spans (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// `OTEL_BSP_SCHEDULE_DELAY`: the longest a span waits for its batch.
    pub schedule_delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting for export; more are
    /// dropped (and counted).
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_EXPORT_TIMEOUT`: how long one export may take.
    pub export_timeout: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        Self {
            schedule_delay: Duration::from_millis(5000),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            export_timeout: Duration::from_millis(30_000),
        }
    }
}

/// The longest the final export at shutdown may take, whatever
/// `OTEL_BSP_EXPORT_TIMEOUT` says: a slow or dead collector must not hold
/// a stopping daemon.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// What the standard `OTEL_*` variables ask for, plus who is exporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The URL spans are sent to (for `http/protobuf`, with its
    /// `/v1/traces` path); `None`: export off.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: a PEM file of CA certificates
    /// trusted for an `https://` endpoint, beside the system roots.
    pub certificate: Option<PathBuf>,
    pub batch: BatchSettings,
    /// `service.name`.
    pub service_name: String,
    /// `service.instance.id`: the gateway's or the instance's id.
    pub instance_id: Option<String>,
    /// `deployment.environment`: the instance's environment.
    pub environment: Option<String>,
    /// Resource keys `OTEL_RESOURCE_ATTRIBUTES` sets: the operator's word
    /// wins over the ones above.
    resource_keys: Vec<String>,
}

impl TelemetryConfig {
    /// Reads the variables in `vars`; `service` names the spans when
    /// `OTEL_SERVICE_NAME` does not.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
        service: &str,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(key, _)| key.starts_with("OTEL_"))
            .map(|(key, value)| (key, value.trim().to_string()))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let get = |key: &str| vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        // The traces-only variable wins over the general one.
        let either = |general: &'static str, traces: &'static str| {
            get(traces)
                .map(|v| (traces, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let protocol = match either(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ) {
            None => Protocol::Grpc,
            Some((_, "grpc")) => Protocol::Grpc,
            Some((_, "http/protobuf")) => Protocol::HttpProtobuf,
            Some((var, other)) => {
                return Err(ConfigError(format!(
                    "{var}={other}: expected grpc or http/protobuf"
                )));
            }
        };
        let endpoint = match (
            get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            _ if disabled => None,
            (Some(url), _) => Some(checked_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url)?),
            // The general endpoint is the collector's base URL: over HTTP,
            // traces go to its /v1/traces.
            (None, Some(url)) => {
                let url = checked_url("OTEL_EXPORTER_OTLP_ENDPOINT", url)?;
                Some(match protocol {
                    Protocol::Grpc => url,
                    Protocol::HttpProtobuf => format!("{}/v1/traces", url.trim_end_matches('/')),
                })
            }
            (None, None) => None,
        };
        let millis =
            |var: &'static str, default: Duration, range: std::ops::RangeInclusive<u64>| {
                get(var).map_or(Ok(default), |v| {
                    v.parse::<u64>()
                        .ok()
                        .filter(|ms| range.contains(ms))
                        .map(Duration::from_millis)
                        .ok_or_else(|| {
                            ConfigError(format!(
                                "{var}={v}: expected milliseconds, {} to {}",
                                range.start(),
                                range.end()
                            ))
                        })
                })
            };
        let count = |var: &'static str, default: usize| {
            get(var).map_or(Ok(default), |v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| ConfigError(format!("{var}={v}: expected 1 to 1000000")))
            })
        };
        let defaults = BatchSettings::default();
        let batch = BatchSettings {
            schedule_delay: millis(
                "OTEL_BSP_SCHEDULE_DELAY",
                defaults.schedule_delay,
                1..=3_600_000,
            )?,
            max_queue_size: count("OTEL_BSP_MAX_QUEUE_SIZE", defaults.max_queue_size)?,
            max_export_batch_size: count(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                defaults.max_export_batch_size,
            )?,
            export_timeout: millis(
                "OTEL_BSP_EXPORT_TIMEOUT",
                defaults.export_timeout,
                1..=3_600_000,
            )?,
        };
        let resource_keys = get("OTEL_RESOURCE_ATTRIBUTES")
            .unwrap_or_default()
            .split(',')
            .filter_map(|pair| Some(pair.split_once('=')?.0.trim().to_string()))
            .collect();
        Ok(Self {
            endpoint,
            protocol,
            certificate: either(
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            )
            .map(|(_, path)| PathBuf::from(path)),
            batch,
            service_name: get("OTEL_SERVICE_NAME").unwrap_or(service).to_string(),
            instance_id: None,
            environment: None,
            resource_keys,
        })
    }

    /// [`Self::from_vars`] on the process environment.
    pub fn from_env(service: &str) -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars(), service)
    }

    /// Spans carry `service.instance.id = id`.
    pub fn with_instance_id(mut self, id: impl Into<String>) -> Self {
        self.instance_id = Some(id.into());
        self
    }

    /// Spans carry `deployment.environment = environment`.
    pub fn with_environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    pub fn enabled(&self) -> bool {
        self.endpoint.is_some()
    }

    /// The resource attributes this process adds, less those
    /// `OTEL_RESOURCE_ATTRIBUTES` sets itself.
    pub fn resource_attributes(&self) -> Vec<(&'static str, String)> {
        let mut attributes = Vec::new();
        if let Some(id) = &self.instance_id {
            attributes.push(("service.instance.id", id.clone()));
        }
        if let Some(environment) = &self.environment {
            // The name before and after semantic conventions 1.27.
            attributes.push(("deployment.environment", environment.clone()));
            attributes.push(("deployment.environment.name", environment.clone()));
        }
        attributes.retain(|(key, _)| !self.resource_keys.iter().any(|k| k == key));
        attributes
    }
}

fn checked_url(var: &str, url: &str) -> Result<String, ConfigError> {
    let ok = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .is_some_and(|rest| !rest.is_empty())
        && url.parse::<http::Uri>().is_ok();
    if ok {
        Ok(url.to_string())
    } else {
        Err(ConfigError(format!(
            "{var}={url}: expected an http:// or https:// URL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<TelemetryConfig, ConfigError> {
        TelemetryConfig::from_vars(crate::env::vars(pairs), "vps-gateway")
    }

    #[test]
    fn the_standard_variables_switch_export_on_and_off() {
        assert!(!config(&[("OTEL_SERVICE_NAME", "x")]).unwrap().enabled());
        assert!(
            !config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")])
                .unwrap()
                .enabled()
        );
        let on = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]).unwrap();
        assert_eq!(on.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(on.protocol, Protocol::Grpc);
        assert_eq!(on.service_name, "vps-gateway");
        assert_eq!(on.batch, BatchSettings::default());
        let named = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
            ("OTEL_SERVICE_NAME", "gw-node-1"),
        ])
        .unwrap();
        assert_eq!(named.endpoint.as_deref(), Some("http://b:4317"));
        assert_eq!(named.service_name, "gw-node-1");
        for switch in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let disabled = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), switch]);
            assert!(!disabled.unwrap().enabled(), "{switch:?}");
        }
    }

    #[test]
    fn the_protocol_picks_the_transport_and_the_traces_path() {
        let http = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/otel/ca.pem"),
        ])
        .unwrap();
        assert_eq!(http.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            http.endpoint.as_deref(),
            Some("https://collector:4318/v1/traces")
        );
        assert_eq!(http.certificate, Some(PathBuf::from("/etc/otel/ca.pem")));
        // The traces-only URL is used as it is.
        let exact = config(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .unwrap();
        assert_eq!(exact.protocol, Protocol::HttpProtobuf);
        assert_eq!(exact.endpoint.as_deref(), Some("http://c:4318/custom"));
    }

    #[test]
    fn a_bad_value_is_an_error_naming_its_variable() {
        for (pair, expected) in [
            (
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/json: expected grpc or http/protobuf",
            ),
            (
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
                "OTEL_EXPORTER_OTLP_ENDPOINT=collector:4317: expected an http:// or https:// URL",
            ),
            (
                ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
                "OTEL_BSP_SCHEDULE_DELAY=soon: expected milliseconds, 1 to 3600000",
            ),
            (
                ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
                "OTEL_BSP_MAX_QUEUE_SIZE=0: expected 1 to 1000000",
            ),
        ] {
            assert_eq!(config(&[pair]).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn the_resource_names_the_process_unless_the_operator_does() {
        let config = config(&[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")])
            .unwrap()
            .with_instance_id("prod-1")
            .with_environment("prod");
        assert_eq!(
            config.resource_attributes(),
            vec![
                ("service.instance.id", "prod-1".to_string()),
                ("deployment.environment.name", "prod".to_string()),
            ]
        );
    }
}
