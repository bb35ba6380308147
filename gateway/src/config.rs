//! The gateway's settings, read from `GATEWAY_*` environment variables:
//! its own section (the mesh: ports, ids, deadlines, limits, TLS) and the
//! operator side's ([`OpsSettings`], the HTTP endpoints and the log
//! format, read as `vps-service` reads them). A binary that runs more
//! beside the gateway (the node: DHCP, IP allocator) reads its other
//! sections from the same variables ([`GatewayConfig::from_env`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gatemesh_runtime::env::{
    Env, bind_addr, check_label, check_secret, ensure, fields, id_or_hostname, is_label, range,
    weak_secret,
};
use gatemesh_runtime::identity::check_trust_domain;
use gatemesh_runtime::ops::{OpsDefaults, OpsSettings};
use gatemesh_runtime::{ConfigError, Secret};
use serde::Deserialize;

use crate::credentials::{Scope, ScopedSecret, read_secrets_file};
use crate::headers::ForwardHeaders;
use crate::tls::GatewayTls;

/// What every gateway variable starts with.
pub const PREFIX: &str = "GATEWAY_";

/// `GATEWAY_HTTP_PORT` when unset: the gateway's endpoints are never off.
const HTTP_PORT: u16 = 9091;

/// The gateway's defaults for the operator side: on, on loopback (on any
/// other address `/instances` asks for the secret).
const OPS_DEFAULTS: OpsDefaults = OpsDefaults {
    http_port: Some(HTTP_PORT),
    http_bind: "127.0.0.1",
};

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    /// `GATEWAY_API_SECRET`: a secret for instances and callers of every
    /// environment, the small-setup form. Required unless
    /// `GATEWAY_API_SECRETS_FILE` gives the instances theirs (or, under
    /// mTLS, `GATEWAY_TLS_SECRET_OPTIONAL` lets certificates alone do).
    #[serde(default)]
    pub api_secret: Option<Secret>,
    /// `GATEWAY_API_SECRETS_FILE`: instance secrets scoped to
    /// environments, one `<environments> <secret>` a line (see
    /// [`crate::credentials::read_secrets_file`]).
    #[serde(default)]
    pub api_secrets_file: Option<PathBuf>,
    /// `GATEWAY_CALLER_SECRETS_FILE`: caller secrets (the admin API, HTTP
    /// `/instances`) scoped to the environments their calls may reach,
    /// same syntax.
    #[serde(default)]
    pub caller_secrets_file: Option<PathBuf>,
    /// The lines of `GATEWAY_API_SECRETS_FILE`, read at start; set
    /// directly when embedding or testing.
    #[serde(skip)]
    pub instance_secrets: Vec<ScopedSecret>,
    /// The lines of `GATEWAY_CALLER_SECRETS_FILE`, read at start.
    #[serde(skip)]
    pub caller_secrets: Vec<ScopedSecret>,
    /// `GATEWAY_GRPC_PORT`.
    #[serde(default = "defaults::grpc_port")]
    pub grpc_port: u16,
    /// `GATEWAY_BIND`: the address to listen on, an IP address or a host
    /// name resolved at start.
    #[serde(default = "defaults::bind")]
    pub bind: String,
    /// `GATEWAY_METRICS_PER_INSTANCE`: the per-instance gauges of
    /// `/metrics`; large fleets turn them off (series grow as instances
    /// times gateways).
    #[serde(default = "defaults::metrics_per_instance")]
    pub metrics_per_instance: bool,
    /// `GATEWAY_BIND` resolved.
    #[serde(skip, default = "defaults::unresolved")]
    bind_ip: IpAddr,
    /// `GATEWAY_HTTP_PORT`, `GATEWAY_HTTP_BIND`, `GATEWAY_HTTP_TIMEOUT_MS`
    /// and `GATEWAY_LOG_FORMAT`: the operator endpoints (`/health`,
    /// `/ready`, `/instances`, `/metrics`) and the logs.
    #[serde(skip)]
    pub ops: OpsSettings,
    /// `GATEWAY_ID`: this gateway's name; the hostname when unset.
    #[serde(default)]
    pub id: Option<String>,
    /// `GATEWAY_CALL_TIMEOUT_MS`: deadline of a call that names none.
    #[serde(default = "defaults::call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// `GATEWAY_HEARTBEAT_INTERVAL_MS`: how often each side pings.
    #[serde(default = "defaults::heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// `GATEWAY_MAX_MISSED_HEARTBEATS`: silent intervals before a peer is dead.
    #[serde(default = "defaults::max_missed_heartbeats")]
    pub max_missed_heartbeats: u32,
    /// `GATEWAY_QUEUE_CAPACITY`: frames queued to one instance before calls
    /// to it fail with RESOURCE_EXHAUSTED.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// `GATEWAY_STUCK_TIMEOUT_MS`: an instance whose queue stays full this
    /// long is disconnected.
    #[serde(default = "defaults::stuck_timeout_ms")]
    pub stuck_timeout_ms: u64,
    /// `GATEWAY_MAX_MESSAGE_BYTES`: largest payload accepted in one frame.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// `GATEWAY_MAX_CONCURRENCY`: calls from instances served at once.
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// `GATEWAY_MAX_CONCURRENCY_PER_INSTANCE`: calls from one instance in
    /// flight at once (running, or answered and waiting for its queue), so
    /// one instance's flood refuses only that instance.
    #[serde(default = "defaults::max_concurrency_per_instance")]
    pub max_concurrency_per_instance: usize,
    /// `GATEWAY_DRAIN_GRACE_MS`: on shutdown, how long in-flight calls may finish.
    #[serde(default = "defaults::drain_grace_ms")]
    pub drain_grace_ms: u64,
    /// `GATEWAY_RECONNECT_SPREAD_MS`: on shutdown, instances are told to come
    /// back after a random delay up to this, so a restart is not a stampede.
    #[serde(default = "defaults::reconnect_spread_ms")]
    pub reconnect_spread_ms: u64,
    /// `GATEWAY_TLS_CERT`: the gRPC port's certificate chain (PEM); with
    /// `GATEWAY_TLS_KEY` it turns TLS on.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// `GATEWAY_TLS_KEY`: the private key of `GATEWAY_TLS_CERT` (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// `GATEWAY_TLS_CLIENT_CA`: CA certificates (PEM) that sign instance
    /// certificates; turns mTLS on, binding each instance id to its
    /// certificate.
    #[serde(default)]
    pub tls_client_ca: Option<PathBuf>,
    /// `GATEWAY_TLS_SECRET_OPTIONAL`: under mTLS, a peer with a verified
    /// client certificate may leave the shared secret out (a wrong one is
    /// still refused). Off by default.
    #[serde(default)]
    pub tls_secret_optional: bool,
    /// `GATEWAY_TLS_TRUST_DOMAIN`: the SPIFFE trust domain of instance
    /// certificates (`spiffe://<it>/env/<environment>/instance/<id>`).
    #[serde(default = "defaults::trust_domain")]
    pub tls_trust_domain: String,
    /// `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS`: comma-separated environments
    /// in which a client certificate without a SPIFFE ID (its DNS SAN the
    /// instance id, the form before SPIFFE IDs) is accepted; unset: such
    /// certificates are refused.
    #[serde(default)]
    pub tls_dns_san_environments: Option<String>,
    /// The TLS material read from the files above at start (and again
    /// when they change); set directly when embedding or testing.
    #[serde(skip)]
    pub tls: Option<GatewayTls>,
    /// `GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS`: a new gRPC connection must
    /// finish TLS and the HTTP/2 preface and send a request carrying the
    /// secret within this, or it is closed (see [`crate::listener`]).
    #[serde(default = "defaults::conn_handshake_timeout_ms")]
    pub conn_handshake_timeout_ms: u64,
    /// `GATEWAY_CONN_MAX_UNAUTHENTICATED`: gRPC connections open without an
    /// authenticated request yet; one more closes the oldest. Unset: 1024,
    /// or half the open-file limit when that is lower.
    #[serde(default)]
    pub conn_max_unauthenticated: Option<usize>,
    /// `GATEWAY_FORWARD_HEADERS`: gRPC headers of an admin call passed on
    /// to instances as metadata, besides the trace context (comma-separated
    /// names; no credential or proxy header).
    #[serde(default)]
    pub forward_headers: Option<String>,
    /// `GATEWAY_FORWARD_HEADERS` checked: what crosses (see
    /// [`crate::headers`]); set directly when embedding or testing.
    #[serde(skip)]
    pub forward: ForwardHeaders,
}

mod defaults {
    use std::net::{IpAddr, Ipv4Addr};

    pub fn bind() -> String {
        "0.0.0.0".into()
    }
    pub fn unresolved() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    pub fn metrics_per_instance() -> bool {
        true
    }
    pub fn grpc_port() -> u16 {
        1537
    }
    pub fn call_timeout_ms() -> u64 {
        10_000
    }
    pub fn heartbeat_interval_ms() -> u64 {
        5_000
    }
    pub fn max_missed_heartbeats() -> u32 {
        3
    }
    pub fn queue_capacity() -> usize {
        1024
    }
    pub fn stuck_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_message_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn max_concurrency() -> usize {
        1024
    }
    pub fn max_concurrency_per_instance() -> usize {
        64
    }
    pub fn drain_grace_ms() -> u64 {
        10_000
    }
    pub fn reconnect_spread_ms() -> u64 {
        5_000
    }
    pub fn conn_handshake_timeout_ms() -> u64 {
        5_000
    }
    pub fn trust_domain() -> String {
        gatemesh_runtime::identity::DEFAULT_TRUST_DOMAIN.into()
    }
}

impl GatewayConfig {
    /// The names of the gateway's sections, for a binary that checks its
    /// variables against those and its own (see [`Env::check_known`]).
    pub fn sections() -> [&'static [&'static str]; 2] {
        [fields::<Self>(), OpsSettings::fields()]
    }

    /// Reads the settings from `vars` (the process environment in `main`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = Env::new(PREFIX, vars);
        env.check_known(&Self::sections())?;
        Self::from_env(&env)
    }

    /// Reads the gateway's sections from `env`, whose unknown names the
    /// caller has checked across all its sections.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let mut config: Self = env.section()?;
        config.validate()?;
        config.validate_conn()?;
        config.ops = OpsSettings::from_env(env, OPS_DEFAULTS)?;
        config.bind_ip = bind_addr("GATEWAY_BIND", &config.bind)?;
        config.forward = ForwardHeaders::parse(config.forward_headers.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError(format!("GATEWAY_FORWARD_HEADERS: {e}")))?;
        config.tls = GatewayTls::from_files(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
            config.tls_client_ca.as_deref(),
        )?;
        if let Some(path) = &config.api_secrets_file {
            config.instance_secrets = read_secrets_file("GATEWAY_API_SECRETS_FILE", path)?;
        }
        if let Some(path) = &config.caller_secrets_file {
            config.caller_secrets = read_secrets_file("GATEWAY_CALLER_SECRETS_FILE", path)?;
        }
        Ok(config)
    }

    /// Defaults around a secret, for tests and embedding.
    pub fn with_secret(secret: &str) -> Self {
        Self::from_vars([("GATEWAY_API_SECRET".to_string(), secret.to_string())])
            .expect("defaults are valid")
    }

    /// Each secret shorter than
    /// [`MIN_SECRET_LEN`](gatemesh_runtime::env::MIN_SECRET_LEN): where it is set and its
    /// length. The daemon does not start with one
    /// ([`refuse_weak_secrets`](gatemesh_runtime::env::refuse_weak_secrets)).
    pub fn weak_secrets(&self) -> Vec<(String, usize)> {
        let mut secrets = Vec::new();
        if let Some(secret) = &self.api_secret {
            secrets.push(("GATEWAY_API_SECRET".to_string(), secret));
        }
        for (var, scoped) in [
            ("GATEWAY_API_SECRETS_FILE", &self.instance_secrets),
            ("GATEWAY_CALLER_SECRETS_FILE", &self.caller_secrets),
        ] {
            secrets.extend(
                scoped
                    .iter()
                    .map(|s| (format!("a secret of {var}"), &s.secret)),
            );
        }
        secrets
            .into_iter()
            .filter_map(|(at, s)| weak_secret(s.expose()).map(|len| (at, len)))
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        match &self.api_secret {
            Some(secret) => check_secret("GATEWAY_API_SECRET", secret.expose())?,
            None if self.api_secrets_file.is_some() || self.tls_secret_optional => {}
            None => {
                return Err(ConfigError(
                    "GATEWAY_API_SECRET is required but not set (or give instances scoped \
                     secrets with GATEWAY_API_SECRETS_FILE)"
                        .into(),
                ));
            }
        }
        check_trust_domain("GATEWAY_TLS_TRUST_DOMAIN", &self.tls_trust_domain)?;
        if let Some(list) = &self.tls_dns_san_environments {
            ensure(
                list.split(',')
                    .all(|e| is_label(e.trim(), 64) && !e.contains('/')),
                "GATEWAY_TLS_DNS_SAN_ENVIRONMENTS",
                "comma-separated environment labels such as `dev` or `dev,beta`",
            )?;
            ensure(
                self.tls_client_ca.is_some(),
                "GATEWAY_TLS_DNS_SAN_ENVIRONMENTS",
                "to be set only with GATEWAY_TLS_CLIENT_CA (mTLS)",
            )?;
        }
        if let Some(id) = &self.id {
            check_label("GATEWAY_ID", id, 128)?;
        }
        range("GATEWAY_GRPC_PORT", self.grpc_port, 1..=65535)?;
        range(
            "GATEWAY_CALL_TIMEOUT_MS",
            self.call_timeout_ms,
            1..=3_600_000,
        )?;
        range(
            "GATEWAY_HEARTBEAT_INTERVAL_MS",
            self.heartbeat_interval_ms,
            10..=3_600_000,
        )?;
        range(
            "GATEWAY_MAX_MISSED_HEARTBEATS",
            self.max_missed_heartbeats,
            1..=100,
        )?;
        range("GATEWAY_QUEUE_CAPACITY", self.queue_capacity, 1..=1_000_000)?;
        range(
            "GATEWAY_STUCK_TIMEOUT_MS",
            self.stuck_timeout_ms,
            10..=3_600_000,
        )?;
        range(
            "GATEWAY_MAX_CONCURRENCY_PER_INSTANCE",
            self.max_concurrency_per_instance,
            1..=65_536,
        )?;
        range(
            "GATEWAY_MAX_MESSAGE_BYTES",
            self.max_message_bytes,
            1024..=256 * 1024 * 1024,
        )?;
        range(
            "GATEWAY_MAX_CONCURRENCY",
            self.max_concurrency,
            1..=1_000_000,
        )?;
        range("GATEWAY_DRAIN_GRACE_MS", self.drain_grace_ms, 0..=600_000)?;
        range(
            "GATEWAY_RECONNECT_SPREAD_MS",
            self.reconnect_spread_ms,
            0..=600_000,
        )?;
        ensure(
            !self.tls_secret_optional || self.tls_client_ca.is_some(),
            "GATEWAY_TLS_SECRET_OPTIONAL",
            "`true` only with GATEWAY_TLS_CLIENT_CA set (mTLS)",
        )
    }

    /// `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS` as a scope; `None` when unset
    /// (certificates without a SPIFFE ID are refused).
    pub fn dns_san_environments(&self) -> Option<Scope> {
        self.tls_dns_san_environments
            .as_ref()
            .map(|list| Scope::only(list.split(',').map(str::trim)))
    }

    /// Whether a peer holding a verified client certificate may leave the
    /// shared secret out.
    pub fn secret_optional_with_cert(&self) -> bool {
        self.tls_secret_optional && self.tls.as_ref().is_some_and(GatewayTls::is_mtls)
    }

    fn validate_conn(&self) -> Result<(), ConfigError> {
        ensure(
            (100..=600_000).contains(&self.conn_handshake_timeout_ms),
            "GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS",
            "100 to 600000 milliseconds",
        )?;
        ensure(
            self.conn_max_unauthenticated
                .is_none_or(|n| (1..=1_000_000).contains(&n)),
            "GATEWAY_CONN_MAX_UNAUTHENTICATED",
            "1 to 1000000 connections",
        )
    }

    pub fn gateway_id(&self) -> String {
        id_or_hostname(self.id.as_deref(), "gateway")
    }

    /// Where the gRPC port listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.grpc_port)
    }

    /// Where the operator HTTP endpoints listen.
    pub fn http_addr(&self) -> SocketAddr {
        let port = self.ops.http_port.unwrap_or(HTTP_PORT);
        SocketAddr::new(self.ops.http_bind_ip(), port)
    }

    pub fn http_timeout(&self) -> Duration {
        self.ops.http_timeout()
    }

    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Silence after which a peer counts as dead.
    pub fn liveness_timeout(&self) -> Duration {
        self.heartbeat_interval() * self.max_missed_heartbeats
    }

    pub fn stuck_timeout(&self) -> Duration {
        Duration::from_millis(self.stuck_timeout_ms)
    }

    pub fn drain_grace(&self) -> Duration {
        Duration::from_millis(self.drain_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_runtime::env::vars;

    #[test]
    fn defaults_and_errors_that_name_the_variable() {
        let c = GatewayConfig::from_vars(vars(&[("GATEWAY_API_SECRET", "s")])).unwrap();
        assert_eq!(c.grpc_port, 1537);
        assert_eq!(c.call_timeout_ms, 10_000);
        assert_eq!(c.grpc_addr().to_string(), "0.0.0.0:1537");
        assert_eq!(
            c.http_addr().to_string(),
            "127.0.0.1:9091",
            "the HTTP endpoints stay on loopback unless asked"
        );
        assert!(c.metrics_per_instance);
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_BIND", "127.0.0.1"),
            ("GATEWAY_HTTP_BIND", "0.0.0.0"),
            ("GATEWAY_HTTP_PORT", "9100"),
        ]))
        .unwrap();
        assert_eq!(c.grpc_addr().to_string(), "127.0.0.1:1537");
        assert_eq!(c.http_addr().to_string(), "0.0.0.0:9100");
        assert!(!format!("{c:?}").contains("\"s\""), "secret is masked");
        let e = GatewayConfig::from_vars(vars(&[])).unwrap_err().to_string();
        assert!(
            e.starts_with("GATEWAY_API_SECRET is required but not set"),
            "{e}"
        );
        let e = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_GRPC_PORT", "70000"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("GATEWAY_GRPC_PORT"), "{e}");
        let e = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_LOG_FORMAT", "xml"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("GATEWAY_LOG_FORMAT"), "{e}");
    }

    fn error(list: &[(&str, &str)]) -> String {
        let mut all = vec![("GATEWAY_API_SECRET", "s")];
        all.extend_from_slice(list);
        GatewayConfig::from_vars(vars(&all))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_misspelt_variable_stops_the_gateway_naming_the_nearest_setting() {
        assert_eq!(
            error(&[("GATEWAY_GRPC_PROT", "44031")]),
            "GATEWAY_GRPC_PROT: unknown variable; did you mean GATEWAY_GRPC_PORT?"
        );
        let e = error(&[("GATEWAY_HTTP_PROT", "9100")]);
        assert!(e.ends_with("did you mean GATEWAY_HTTP_PORT?"), "{e}");
    }

    #[test]
    fn every_numeric_setting_is_range_checked() {
        let huge = "18446744073709551615";
        for (var, bad, range) in [
            ("GATEWAY_GRPC_PORT", "0", "1 to 65535"),
            ("GATEWAY_HTTP_PORT", "0", "1 to 65535"),
            ("GATEWAY_HTTP_TIMEOUT_MS", "0", "100 to 600000"),
            ("GATEWAY_CALL_TIMEOUT_MS", "0", "1 to 3600000"),
            ("GATEWAY_CALL_TIMEOUT_MS", huge, "1 to 3600000"),
            ("GATEWAY_HEARTBEAT_INTERVAL_MS", "1", "10 to 3600000"),
            ("GATEWAY_MAX_MISSED_HEARTBEATS", "0", "1 to 100"),
            ("GATEWAY_QUEUE_CAPACITY", huge, "1 to 1000000"),
            ("GATEWAY_STUCK_TIMEOUT_MS", "0", "10 to 3600000"),
            ("GATEWAY_MAX_MESSAGE_BYTES", "10", "1024 to 268435456"),
            ("GATEWAY_MAX_CONCURRENCY", huge, "1 to 1000000"),
            ("GATEWAY_MAX_CONCURRENCY", "0", "1 to 1000000"),
            ("GATEWAY_DRAIN_GRACE_MS", huge, "0 to 600000"),
            ("GATEWAY_RECONNECT_SPREAD_MS", huge, "0 to 600000"),
        ] {
            let e = error(&[(var, bad)]);
            assert_eq!(e, format!("{var}={bad}: expected {range}"));
        }
    }

    #[test]
    fn secrets_ids_and_addresses_are_checked_at_start() {
        let e = GatewayConfig::from_vars(vars(&[("GATEWAY_API_SECRET", "two\nlines")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("GATEWAY_API_SECRET: expected printable ASCII"),
            "{e}"
        );
        let e = error(&[("GATEWAY_ID", "gw 1")]);
        assert!(e.starts_with("GATEWAY_ID: expected 1 to 128 bytes"), "{e}");
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_BIND", "localhost"),
        ]))
        .unwrap();
        assert!(c.grpc_addr().ip().is_loopback());
        let e = error(&[("GATEWAY_BIND", "no-such-host.invalid")]);
        assert!(e.starts_with("GATEWAY_BIND=no-such-host.invalid: "), "{e}");
        let e = error(&[("GATEWAY_HTTP_BIND", "no-such-host.invalid")]);
        assert!(
            e.starts_with("GATEWAY_HTTP_BIND=no-such-host.invalid: "),
            "{e}"
        );
    }

    #[test]
    fn an_empty_value_is_unset() {
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_GRPC_PORT", ""),
            ("GATEWAY_HTTP_BIND", ""),
        ]))
        .unwrap();
        assert_eq!(c.grpc_port, 1537);
        assert_eq!(
            c.http_addr().to_string(),
            "127.0.0.1:9091",
            "empty is unset: the default"
        );
    }

    #[test]
    fn forwarded_headers_are_checked_at_start() {
        let c = GatewayConfig::from_vars(vars(&[("GATEWAY_API_SECRET", "s")])).unwrap();
        assert_eq!(
            c.forward.names().collect::<Vec<_>>(),
            ["traceparent", "tracestate", "baggage"]
        );
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_FORWARD_HEADERS", "x-request-id"),
        ]))
        .unwrap();
        assert!(c.forward.allows("x-request-id"));
        assert_eq!(
            error(&[("GATEWAY_FORWARD_HEADERS", "x-request-id,cookie")]),
            "GATEWAY_FORWARD_HEADERS: \"cookie\" carries a credential: never forwarded to instances"
        );
    }

    #[test]
    fn scoped_secrets_trust_domain_and_dns_san_environments() {
        let file = std::env::temp_dir().join(format!("gatemesh-cfg-{}", std::process::id()));
        std::fs::write(&file, "dev d\n* all\n").unwrap();
        let path = file.to_str().unwrap();
        let c = GatewayConfig::from_vars(vars(&[("GATEWAY_API_SECRETS_FILE", path)])).unwrap();
        assert!(c.api_secret.is_none(), "the shared secret is optional then");
        assert_eq!(c.instance_secrets.len(), 2);
        assert_eq!(c.tls_trust_domain, "gatemesh");
        assert_eq!(c.dns_san_environments(), None);
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_CALLER_SECRETS_FILE", path),
        ]))
        .unwrap();
        assert_eq!(c.caller_secrets.len(), 2);
        let _ = std::fs::remove_file(&file);
        let e = error(&[("GATEWAY_CALLER_SECRETS_FILE", "/nonexistent/callers")]);
        assert!(
            e.starts_with("GATEWAY_CALLER_SECRETS_FILE: cannot read /nonexistent/callers"),
            "{e}"
        );
        let e = error(&[("GATEWAY_TLS_TRUST_DOMAIN", "Gate Mesh")]);
        assert!(e.starts_with("GATEWAY_TLS_TRUST_DOMAIN: expected"), "{e}");
        let e = error(&[("GATEWAY_TLS_DNS_SAN_ENVIRONMENTS", "dev")]);
        assert!(
            e.starts_with("GATEWAY_TLS_DNS_SAN_ENVIRONMENTS: expected to be set only with"),
            "{e}"
        );
        let e = error(&[("GATEWAY_TLS_DNS_SAN_ENVIRONMENTS", "dev,,beta")]);
        assert!(
            e.starts_with("GATEWAY_TLS_DNS_SAN_ENVIRONMENTS: expected comma"),
            "{e}"
        );
    }

    #[test]
    fn half_given_or_unreadable_tls_settings_name_what_is_wrong() {
        let err = |list: &[(&str, &str)]| {
            let mut all = vec![("GATEWAY_API_SECRET", "s")];
            all.extend_from_slice(list);
            GatewayConfig::from_vars(vars(&all))
                .unwrap_err()
                .to_string()
        };
        let e = err(&[("GATEWAY_TLS_CERT", "/etc/gw/cert.pem")]);
        assert!(e.starts_with("GATEWAY_TLS_KEY: required"), "{e}");
        let e = err(&[("GATEWAY_TLS_KEY", "/etc/gw/key.pem")]);
        assert!(e.starts_with("GATEWAY_TLS_CERT: required"), "{e}");
        let e = err(&[("GATEWAY_TLS_CLIENT_CA", "/etc/gw/ca.pem")]);
        assert!(e.starts_with("GATEWAY_TLS_CLIENT_CA: mTLS needs"), "{e}");
        let e = err(&[("GATEWAY_TLS_SECRET_OPTIONAL", "true")]);
        assert!(e.starts_with("GATEWAY_TLS_SECRET_OPTIONAL"), "{e}");
        let e = err(&[
            ("GATEWAY_TLS_CERT", "/nonexistent/cert.pem"),
            ("GATEWAY_TLS_KEY", "/nonexistent/key.pem"),
        ]);
        assert!(e.starts_with("GATEWAY_TLS_CERT: cannot read"), "{e}");
        let garbage =
            std::env::temp_dir().join(format!("gatemesh-garbage-{}.pem", std::process::id()));
        std::fs::write(&garbage, "not a certificate").unwrap();
        let path = garbage.to_str().unwrap();
        let e = err(&[("GATEWAY_TLS_CERT", path), ("GATEWAY_TLS_KEY", path)]);
        assert!(
            e.starts_with("GATEWAY_TLS_CERT: expected a PEM file"),
            "{e}"
        );
        let _ = std::fs::remove_file(&garbage);
        let c = GatewayConfig::from_vars(vars(&[("GATEWAY_API_SECRET", "s")])).unwrap();
        assert!(c.tls.is_none() && !c.secret_optional_with_cert());
    }
}
