//! `vps-service` settings, read from `VPS_*` environment variables: the
//! instance's own section and the operator side's ([`OpsSettings`], the
//! HTTP endpoints and the log format, read as the gateway reads them).

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_runtime::env::{
    Env, check_label, check_secret, ensure, fields, id_or_hostname, range,
};
use gatemesh_runtime::identity::check_trust_domain;
use gatemesh_runtime::ops::{OpsDefaults, OpsSettings};
use gatemesh_runtime::{ConfigError, Secret};
use serde::Deserialize;

use crate::tls::ClientTls;

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    /// `VPS_GATEWAY_URL`: one gateway URL or a comma-separated list
    /// (`http://host:1537` or `https://...`).
    pub gateway_url: String,
    /// `VPS_GATEWAY_API_SECRET`: the gateway's `GATEWAY_API_SECRET`.
    pub gateway_api_secret: Secret,
    /// `VPS_INSTANCE_ID`: unique name of this instance; the hostname when unset.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// `VPS_ENVIRONMENT`: `beta`, `prod`, `dev`, ...
    #[serde(default = "defaults::environment")]
    pub environment: String,
    /// `VPS_INVENTORY_FILE`: JSON or TOML list of VPS; a built-in sample when unset.
    #[serde(default)]
    pub inventory_file: Option<PathBuf>,
    /// `VPS_ALLOCATE_IPS`: at start, reserve an address on the gateway for
    /// every VPS of the inventory file that has a MAC and no IP
    /// (`AllocateIP`, idempotent, so each restart asks again safely).
    #[serde(default)]
    pub allocate_ips: bool,
    /// `VPS_DATABASE_URL`: a PostgreSQL URL (`postgres://user:pass@host:port/db`);
    /// the inventory is then the database's `vps` table, created at start if
    /// missing. Exclusive with `VPS_INVENTORY_FILE`.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// `VPS_DATABASE_POOL_SIZE`: connections to the database at most.
    #[serde(default = "defaults::database_pool_size")]
    pub database_pool_size: usize,
    /// `VPS_MAX_CONCURRENCY`: handlers running at once; more are refused
    /// with RESOURCE_EXHAUSTED.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// `VPS_MAX_CONCURRENCY_PER_GATEWAY`: requests of one gateway in flight
    /// at once, so one gateway's flood refuses only that gateway.
    #[serde(default = "defaults::max_concurrency_per_gateway")]
    pub max_concurrency_per_gateway: usize,
    /// `VPS_RECONNECT_BASE_MS`: first reconnect delay ceiling.
    #[serde(default = "defaults::reconnect_base_ms")]
    pub reconnect_base_ms: u64,
    /// `VPS_RECONNECT_MAX_MS`: reconnect delay cap.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// `VPS_DRAIN_GRACE_MS`: on shutdown, how long running handlers may finish.
    #[serde(default = "defaults::drain_grace_ms")]
    pub drain_grace_ms: u64,
    /// `VPS_HTTP_PORT` (off when unset), `VPS_HTTP_BIND`,
    /// `VPS_HTTP_TIMEOUT_MS` and `VPS_LOG_FORMAT`: the operator endpoints
    /// (`/health`, `/metrics`) and the logs.
    #[serde(skip)]
    pub ops: OpsSettings,
    /// `VPS_TLS_CA`: CA certificates (PEM) that sign the gateways'
    /// certificates; the system's roots when unset.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// `VPS_TLS_CERT`: this instance's client certificate (PEM), for mTLS
    /// gateways. Its SPIFFE ID must name this instance and its environment
    /// (`spiffe://<VPS_TLS_TRUST_DOMAIN>/env/<VPS_ENVIRONMENT>/instance/<VPS_INSTANCE_ID>`),
    /// or in the older form its DNS SAN (or CN) the instance id: checked at
    /// start.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// `VPS_TLS_KEY`: the private key of `VPS_TLS_CERT` (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// `VPS_TLS_TRUST_DOMAIN`: the SPIFFE trust domain of this instance's
    /// certificate, as the gateways' `GATEWAY_TLS_TRUST_DOMAIN`.
    #[serde(default = "defaults::trust_domain")]
    pub tls_trust_domain: String,
    /// The TLS material read from the files above (at start, and again
    /// when they change).
    #[serde(skip)]
    pub tls: ClientTls,
}

/// The instance's defaults for the operator side: off unless
/// `VPS_HTTP_PORT` is set, on every address.
const OPS_DEFAULTS: OpsDefaults = OpsDefaults {
    http_port: None,
    http_bind: "0.0.0.0",
};

mod defaults {
    pub fn environment() -> String {
        "dev".into()
    }
    pub fn max_concurrency() -> usize {
        256
    }
    pub fn max_concurrency_per_gateway() -> usize {
        128
    }
    pub fn reconnect_base_ms() -> u64 {
        250
    }
    pub fn reconnect_max_ms() -> u64 {
        30_000
    }
    pub fn drain_grace_ms() -> u64 {
        10_000
    }
    pub fn database_pool_size() -> usize {
        16
    }
    pub fn trust_domain() -> String {
        gatemesh_runtime::identity::DEFAULT_TRUST_DOMAIN.into()
    }
}

impl ServiceConfig {
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = Env::new("VPS_", vars);
        env.check_known(&[fields::<Self>(), OpsSettings::fields()])?;
        let mut config: Self = env.section()?;
        config.validate()?;
        config.ops = OpsSettings::from_env(&env, OPS_DEFAULTS)?;
        config.tls = ClientTls::from_config(&config)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let urls = self.gateway_urls();
        ensure(
            !urls.is_empty(),
            "VPS_GATEWAY_URL",
            "one or more comma-separated gateway URLs",
        )?;
        for url in &urls {
            ensure(
                url.starts_with("http://") || url.starts_with("https://"),
                "VPS_GATEWAY_URL",
                &format!("URLs starting with http:// or https://, got {url:?}"),
            )?;
            ensure(
                url.parse::<tonic::transport::Uri>().is_ok(),
                "VPS_GATEWAY_URL",
                &format!("valid URLs, got {url:?}"),
            )?;
        }
        check_secret("VPS_GATEWAY_API_SECRET", self.gateway_api_secret.expose())?;
        // The gateway's hello check, applied before dialling so a bad id
        // stops the instance instead of being refused forever.
        check_label("VPS_INSTANCE_ID", &self.instance_id(), 128)?;
        check_label("VPS_ENVIRONMENT", &self.environment, 64)?;
        check_trust_domain("VPS_TLS_TRUST_DOMAIN", &self.tls_trust_domain)?;
        ensure(
            !self.allocate_ips || (urls.len() == 1 && self.inventory_file.is_some()),
            "VPS_ALLOCATE_IPS",
            "`true` only with VPS_INVENTORY_FILE and one VPS_GATEWAY_URL (the inventory does not \
             say which node a VPS lives on)",
        )?;
        if let Some(url) = &self.database_url {
            ensure(
                self.inventory_file.is_none(),
                "VPS_DATABASE_URL",
                "unset when VPS_INVENTORY_FILE is set (one inventory at a time)",
            )?;
            let url = url.expose();
            ensure(
                url.starts_with("postgres://")
                    || url.starts_with("postgresql://")
                    || url.contains('='),
                "VPS_DATABASE_URL",
                "a postgres:// URL or a key=value connection string",
            )?;
        }
        range("VPS_DATABASE_POOL_SIZE", self.database_pool_size, 1..=1024)?;
        range("VPS_MAX_CONCURRENCY", self.max_concurrency, 1..=1_000_000)?;
        range(
            "VPS_MAX_CONCURRENCY_PER_GATEWAY",
            self.max_concurrency_per_gateway,
            1..=65_536,
        )?;
        range("VPS_RECONNECT_BASE_MS", self.reconnect_base_ms, 1..=600_000)?;
        range(
            "VPS_RECONNECT_MAX_MS",
            self.reconnect_max_ms,
            self.reconnect_base_ms..=3_600_000,
        )?;
        range("VPS_DRAIN_GRACE_MS", self.drain_grace_ms, 0..=600_000)
    }

    pub fn gateway_urls(&self) -> Vec<String> {
        self.gateway_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn instance_id(&self) -> String {
        id_or_hostname(self.instance_id.as_deref(), "instance")
    }

    /// Where the operator endpoints listen, when `VPS_HTTP_PORT` is set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.http_addr()
    }

    pub fn http_timeout(&self) -> Duration {
        self.ops.http_timeout()
    }

    pub fn reconnect_base(&self) -> Duration {
        Duration::from_millis(self.reconnect_base_ms)
    }

    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_runtime::env::vars;

    #[test]
    fn urls_secret_and_errors() {
        let c = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a:1537, http://b:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
        ]))
        .unwrap();
        assert_eq!(c.gateway_urls(), ["http://a:1537", "http://b:1537"]);
        assert_eq!(c.environment, "dev");
        assert_eq!(c.http_addr(), None, "the endpoints are off by default");
        let e = ServiceConfig::from_vars(vars(&[("VPS_GATEWAY_URL", "http://a")]))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "VPS_GATEWAY_API_SECRET is required but not set");
        let e = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "a:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("VPS_GATEWAY_URL"), "{e}");
        let e = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a"),
            ("VPS_GATEWAY_API_SECRET", "s"),
            ("VPS_MAX_CONCURRENCY", "many"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("VPS_MAX_CONCURRENCY"), "{e}");
    }

    fn error(list: &[(&str, &str)]) -> String {
        let mut all = vec![
            ("VPS_GATEWAY_URL", "http://a:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
        ];
        all.extend_from_slice(list);
        ServiceConfig::from_vars(vars(&all))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn allocating_ips_needs_the_inventory_file_and_one_gateway() {
        let e = error(&[("VPS_ALLOCATE_IPS", "true")]);
        assert!(
            e.starts_with("VPS_ALLOCATE_IPS: expected `true` only with"),
            "{e}"
        );
        let e = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a:1537,http://b:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
            ("VPS_INVENTORY_FILE", "/i.json"),
            ("VPS_ALLOCATE_IPS", "true"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("VPS_ALLOCATE_IPS"), "{e}");
        let c = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
            ("VPS_INVENTORY_FILE", "/i.json"),
            ("VPS_ALLOCATE_IPS", "true"),
        ]))
        .unwrap();
        assert!(c.allocate_ips);
    }

    #[test]
    fn a_misspelt_variable_stops_the_instance_naming_the_nearest_setting() {
        assert_eq!(
            error(&[("VPS_GATEWAY_URLS", "http://b:1537")]),
            "VPS_GATEWAY_URLS: unknown variable; did you mean VPS_GATEWAY_URL?"
        );
    }

    #[test]
    fn id_environment_and_secret_pass_the_gateways_hello_check_before_dialling() {
        let e = error(&[("VPS_INSTANCE_ID", "inst 1")]);
        assert!(
            e.starts_with("VPS_INSTANCE_ID: expected 1 to 128 bytes"),
            "{e}"
        );
        let long = "x".repeat(129);
        let e = error(&[("VPS_INSTANCE_ID", &long)]);
        assert!(e.starts_with("VPS_INSTANCE_ID: expected"), "{e}");
        let long = "e".repeat(65);
        let e = error(&[("VPS_ENVIRONMENT", &long)]);
        assert!(
            e.starts_with("VPS_ENVIRONMENT: expected 1 to 64 bytes"),
            "{e}"
        );
        let e = error(&[("VPS_ENVIRONMENT", "pröd")]);
        assert!(e.starts_with("VPS_ENVIRONMENT: expected"), "{e}");
        let e = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a:1537"),
            ("VPS_GATEWAY_API_SECRET", "line\nbreak"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("VPS_GATEWAY_API_SECRET: expected printable"),
            "{e}"
        );
        let ok = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "http://a:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
            ("VPS_INSTANCE_ID", "node-1/vps-service@beta:2"),
            ("VPS_HTTP_PORT", "9092"),
            ("VPS_HTTP_BIND", "localhost"),
        ]))
        .unwrap();
        assert!(ok.http_addr().unwrap().ip().is_loopback());
    }

    #[test]
    fn every_numeric_setting_is_range_checked() {
        let huge = "18446744073709551615";
        for (var, bad, range) in [
            ("VPS_DATABASE_POOL_SIZE", "0", "1 to 1024"),
            ("VPS_MAX_CONCURRENCY", huge, "1 to 1000000"),
            ("VPS_RECONNECT_BASE_MS", "0", "1 to 600000"),
            ("VPS_RECONNECT_MAX_MS", huge, "250 to 3600000"),
            ("VPS_RECONNECT_MAX_MS", "100", "250 to 3600000"),
            ("VPS_DRAIN_GRACE_MS", huge, "0 to 600000"),
            ("VPS_HTTP_PORT", "0", "1 to 65535"),
            ("VPS_HTTP_TIMEOUT_MS", "1", "100 to 600000"),
        ] {
            assert_eq!(
                error(&[(var, bad)]),
                format!("{var}={bad}: expected {range}")
            );
        }
    }

    #[test]
    fn database_settings() {
        let base = [
            ("VPS_GATEWAY_URL", "http://a:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            ServiceConfig::from_vars(vars(&all))
        };
        let c = with(&[("VPS_DATABASE_URL", "postgres://u:pw@db:5432/inv")]).unwrap();
        assert_eq!(
            c.database_url.as_ref().unwrap().expose(),
            "postgres://u:pw@db:5432/inv"
        );
        assert_eq!(c.database_pool_size, 16);
        assert!(
            !format!("{c:?}").contains("pw@"),
            "the URL may hold a password"
        );
        let e = with(&[("VPS_DATABASE_URL", "mysql://db")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("VPS_DATABASE_URL"), "{e}");
        let e = with(&[
            ("VPS_DATABASE_URL", "postgres://db/inv"),
            ("VPS_INVENTORY_FILE", "/etc/inv.json"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("VPS_DATABASE_URL"), "{e}");
        let e = with(&[("VPS_DATABASE_POOL_SIZE", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("VPS_DATABASE_POOL_SIZE"), "{e}");
    }

    #[test]
    fn half_given_tls_settings_name_what_is_missing() {
        let err = |list: &[(&str, &str)]| {
            let mut all = vec![
                ("VPS_GATEWAY_URL", "https://gw:1537"),
                ("VPS_GATEWAY_API_SECRET", "s"),
            ];
            all.extend_from_slice(list);
            ServiceConfig::from_vars(vars(&all))
                .unwrap_err()
                .to_string()
        };
        let e = err(&[("VPS_TLS_CERT", "/etc/vps/cert.pem")]);
        assert!(e.starts_with("VPS_TLS_KEY: required"), "{e}");
        let e = err(&[("VPS_TLS_KEY", "/etc/vps/key.pem")]);
        assert!(e.starts_with("VPS_TLS_CERT: required"), "{e}");
        let e = err(&[("VPS_TLS_CA", "/nonexistent/ca.pem")]);
        assert!(e.starts_with("VPS_TLS_CA: cannot read"), "{e}");
        let e = err(&[
            ("VPS_TLS_CERT", "/nonexistent/c.pem"),
            ("VPS_TLS_KEY", "/nonexistent/k.pem"),
        ]);
        assert!(e.starts_with("VPS_TLS_CERT: cannot read"), "{e}");
        // https with no CA: the system's roots.
        let c = ServiceConfig::from_vars(vars(&[
            ("VPS_GATEWAY_URL", "https://gw:1537"),
            ("VPS_GATEWAY_API_SECRET", "s"),
        ]))
        .unwrap();
        assert!(!c.tls.has_ca() && !c.tls.has_identity());
    }
}
