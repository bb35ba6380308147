//! `vps-gateway` settings, read from `GATEWAY_*` environment variables.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use gatemesh_runtime::env::{bind_addr, check_label, check_secret, ensure, from_vars, range};
use gatemesh_runtime::{ConfigError, Secret};
use serde::Deserialize;

use crate::dhcp::{DhcpConfig, Namespace};
use crate::tls::GatewayTls;

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayConfig {
    /// `GATEWAY_API_SECRET`: instances and callers must present it.
    pub api_secret: Secret,
    /// `GATEWAY_GRPC_PORT`.
    #[serde(default = "defaults::grpc_port")]
    pub grpc_port: u16,
    /// `GATEWAY_BIND`: the address to listen on, an IP address or a host
    /// name resolved at start.
    #[serde(default = "defaults::bind")]
    pub bind: String,
    /// `GATEWAY_HTTP_PORT`: the operator HTTP endpoints (`/health`,
    /// `/ready`, `/instances`, `/metrics`), plain HTTP even when gRPC uses TLS.
    #[serde(default = "defaults::http_port")]
    pub http_port: u16,
    /// `GATEWAY_HTTP_BIND`: the address of the HTTP endpoints, loopback by
    /// default; on any other address `/instances` asks for the secret.
    #[serde(default = "defaults::http_bind")]
    pub http_bind: String,
    /// `GATEWAY_HTTP_TIMEOUT_MS`: an HTTP connection must send a request's
    /// headers within this, and an idle keep-alive connection is closed
    /// after it.
    #[serde(default = "defaults::http_timeout_ms")]
    pub http_timeout_ms: u64,
    /// `GATEWAY_METRICS_PER_INSTANCE`: the per-instance gauges of
    /// `/metrics`; large fleets turn them off (series grow as instances
    /// times gateways).
    #[serde(default = "defaults::metrics_per_instance")]
    pub metrics_per_instance: bool,
    /// `GATEWAY_BIND` and `GATEWAY_HTTP_BIND` resolved.
    #[serde(skip, default = "defaults::unresolved")]
    bind_ip: IpAddr,
    #[serde(skip, default = "defaults::unresolved")]
    http_bind_ip: IpAddr,
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
    /// `GATEWAY_LOG_FORMAT`: `text` or `json`.
    #[serde(default)]
    pub log_format: Option<String>,
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
    /// The TLS material read from the files above at start; set directly
    /// when embedding or testing.
    #[serde(skip)]
    pub tls: Option<GatewayTls>,
    /// `GATEWAY_DHCP_LEASES_FILE`: dnsmasq's lease file; setting it turns
    /// the DHCP manager on.
    #[serde(default)]
    pub dhcp_leases_file: Option<PathBuf>,
    /// `GATEWAY_DHCP_HOSTS_FILE`: the `addn-hosts` file the manager writes.
    #[serde(default)]
    pub dhcp_hosts_file: Option<PathBuf>,
    /// `GATEWAY_DNSMASQ_PID_FILE`: dnsmasq's pid file, to SIGHUP it after
    /// the hosts file changes; no reload when unset.
    #[serde(default)]
    pub dnsmasq_pid_file: Option<PathBuf>,
    /// `GATEWAY_DHCP_RECONCILE_MS`: full re-read of the lease file, a
    /// safety net under the file watch.
    #[serde(default = "defaults::dhcp_reconcile_ms")]
    pub dhcp_reconcile_ms: u64,
    /// `GATEWAY_DHCP_CONCURRENCY`: lease resolutions in flight at once.
    #[serde(default = "defaults::dhcp_concurrency")]
    pub dhcp_concurrency: usize,
    /// `GATEWAY_DHCP_CALL_TIMEOUT_MS`: deadline of one lease resolution.
    #[serde(default = "defaults::dhcp_call_timeout_ms")]
    pub dhcp_call_timeout_ms: u64,
    /// `GATEWAY_DHCP_RETRY_MAX_MS`: cap of the backoff between attempts
    /// at a lease nobody knows yet.
    #[serde(default = "defaults::dhcp_retry_max_ms")]
    pub dhcp_retry_max_ms: u64,
    /// `GATEWAY_DHCP_VPS_HOSTNAME_PREFIX`: every name written to the
    /// hosts file starts with this (the VPS namespace); with
    /// `GATEWAY_DHCP_TRUST_HOSTNAMES`, also the hostnames taken as names.
    #[serde(default = "defaults::dhcp_vps_hostname_prefix")]
    pub dhcp_vps_hostname_prefix: String,
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
    /// `GATEWAY_DHCP_VPS_DOMAIN`: when set, every name written also ends
    /// with `.<domain>`.
    #[serde(default)]
    pub dhcp_vps_domain: Option<String>,
    /// `GATEWAY_DHCP_TRUST_HOSTNAMES`: a lease whose DHCP hostname is in
    /// the VPS namespace is named by it, without a call. The tenant's VM
    /// chooses its hostname: trusted networks only. Off by default.
    #[serde(default)]
    pub dhcp_trust_hostnames: bool,
    /// `GATEWAY_DHCP_ENVIRONMENTS`: comma-separated environments whose
    /// instances may name leases here (e.g. `prod`); unset: any.
    #[serde(default)]
    pub dhcp_environments: Option<String>,
    /// `GATEWAY_DHCP_MAX_LEASES`: leases tracked at most.
    #[serde(default = "defaults::dhcp_max_leases")]
    pub dhcp_max_leases: usize,
    /// `GATEWAY_IP_POOL`: the addresses this gateway allocates to VPSs
    /// (`10.0.0.50-10.0.0.250`, CIDR blocks and single addresses,
    /// comma-separated); setting it turns the IP allocator on.
    #[serde(default)]
    pub ip_pool: Option<String>,
    /// `GATEWAY_IP_POOL_EXCLUDE`: addresses of the pool never allocated,
    /// in the same syntax.
    #[serde(default)]
    pub ip_pool_exclude: Option<String>,
    /// `GATEWAY_IP_RESERVATIONS_FILE`: the dnsmasq `dhcp-hostsfile` the
    /// allocator writes and keeps its state in.
    #[serde(default)]
    pub ip_reservations_file: Option<PathBuf>,
    /// `GATEWAY_IP_RELEASE_ANY_ENVIRONMENT`: a release from another
    /// environment than the allocator's is allowed. Off by default.
    #[serde(default)]
    pub ip_release_any_environment: bool,
}

mod defaults {
    use std::net::{IpAddr, Ipv4Addr};

    pub fn bind() -> String {
        "0.0.0.0".into()
    }
    pub fn http_bind() -> String {
        "127.0.0.1".into()
    }
    pub fn unresolved() -> IpAddr {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
    pub fn http_timeout_ms() -> u64 {
        5_000
    }
    pub fn metrics_per_instance() -> bool {
        true
    }
    pub fn grpc_port() -> u16 {
        1537
    }
    pub fn http_port() -> u16 {
        9091
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
    pub fn dhcp_reconcile_ms() -> u64 {
        30_000
    }
    pub fn dhcp_concurrency() -> usize {
        64
    }
    pub fn dhcp_call_timeout_ms() -> u64 {
        2_000
    }
    pub fn dhcp_retry_max_ms() -> u64 {
        60_000
    }
    pub fn dhcp_vps_hostname_prefix() -> String {
        "vps-".into()
    }
    pub fn conn_handshake_timeout_ms() -> u64 {
        5_000
    }
    pub fn dhcp_max_leases() -> usize {
        262_144
    }
}

impl GatewayConfig {
    /// Reads the settings from `vars` (the process environment in `main`).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config: Self = from_vars("GATEWAY_", vars)?;
        config.validate()?;
        config.validate_conn()?;
        config.bind_ip = bind_addr("GATEWAY_BIND", &config.bind)?;
        config.http_bind_ip = bind_addr("GATEWAY_HTTP_BIND", &config.http_bind)?;
        config.tls = GatewayTls::from_files(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
            config.tls_client_ca.as_deref(),
        )?;
        Ok(config)
    }

    /// Defaults around a secret, for tests and embedding.
    pub fn with_secret(secret: &str) -> Self {
        Self::from_vars([("GATEWAY_API_SECRET".to_string(), secret.to_string())])
            .expect("defaults are valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_secret("GATEWAY_API_SECRET", self.api_secret.expose())?;
        if let Some(id) = &self.id {
            check_label("GATEWAY_ID", id, 128)?;
        }
        range("GATEWAY_GRPC_PORT", self.grpc_port, 1..=65535)?;
        range("GATEWAY_HTTP_PORT", self.http_port, 1..=65535)?;
        range(
            "GATEWAY_HTTP_TIMEOUT_MS",
            self.http_timeout_ms,
            100..=600_000,
        )?;
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
        if let Some(format) = &self.log_format {
            ensure(
                matches!(format.as_str(), "text" | "json"),
                "GATEWAY_LOG_FORMAT",
                "`text` or `json`",
            )?;
        }
        ensure(
            !self.tls_secret_optional || self.tls_client_ca.is_some(),
            "GATEWAY_TLS_SECRET_OPTIONAL",
            "`true` only with GATEWAY_TLS_CLIENT_CA set (mTLS)",
        )?;
        self.validate_ipam()?;
        self.validate_dhcp()
    }

    fn validate_ipam(&self) -> Result<(), ConfigError> {
        let Some(pool) = &self.ip_pool else {
            ensure(
                self.ip_reservations_file.is_none() && self.ip_pool_exclude.is_none(),
                "GATEWAY_IP_POOL",
                "a pool such as `10.0.0.50-10.0.0.250`, since GATEWAY_IP_RESERVATIONS_FILE or \
                 GATEWAY_IP_POOL_EXCLUDE is set",
            )?;
            return Ok(());
        };
        crate::ipam::Pool::parse(pool, "").map_err(|e| {
            ConfigError(format!(
                "GATEWAY_IP_POOL: {e}; expected ranges such as `10.0.0.50-10.0.0.250,10.0.1.0/28`"
            ))
        })?;
        let exclude = self.ip_pool_exclude.as_deref().unwrap_or("");
        crate::ipam::Pool::parse(exclude, "")
            .map(drop)
            .or_else(|e| match e {
                crate::ipam::PoolError::Empty | crate::ipam::PoolError::TooLarge(_) => Ok(()),
                e => Err(e),
            })
            .map_err(|e| ConfigError(format!("GATEWAY_IP_POOL_EXCLUDE: {e}")))?;
        crate::ipam::Pool::parse(pool, exclude)
            .map_err(|e| ConfigError(format!("GATEWAY_IP_POOL_EXCLUDE: {e}")))?;
        let Some(file) = &self.ip_reservations_file else {
            return Err(ConfigError(
                "GATEWAY_IP_RESERVATIONS_FILE: expected a path, since GATEWAY_IP_POOL is set"
                    .into(),
            ));
        };
        ensure(
            Some(file) != self.dhcp_hosts_file.as_ref()
                && Some(file) != self.dhcp_leases_file.as_ref(),
            "GATEWAY_IP_RESERVATIONS_FILE",
            "a path other than GATEWAY_DHCP_HOSTS_FILE and GATEWAY_DHCP_LEASES_FILE",
        )
    }

    /// The IP allocator's settings, when `GATEWAY_IP_POOL` turns it on.
    /// It checks leases in `GATEWAY_DHCP_LEASES_FILE` and reloads dnsmasq
    /// through `GATEWAY_DNSMASQ_PID_FILE`, as the DHCP manager does.
    pub fn ipam(&self) -> Option<crate::ipam::IpamConfig> {
        let pool = crate::ipam::Pool::parse(
            self.ip_pool.as_deref()?,
            self.ip_pool_exclude.as_deref().unwrap_or(""),
        )
        .ok()?;
        Some(crate::ipam::IpamConfig {
            leases_file: self.dhcp_leases_file.clone(),
            pid_file: self.dnsmasq_pid_file.clone(),
            release_any_environment: self.ip_release_any_environment,
            hostname_prefix: self.dhcp_vps_hostname_prefix.clone(),
            ..crate::ipam::IpamConfig::new(pool, self.ip_reservations_file.clone()?)
        })
    }

    /// Whether a peer holding a verified client certificate may leave the
    /// shared secret out.
    pub fn secret_optional_with_cert(&self) -> bool {
        self.tls_secret_optional && self.tls.as_ref().is_some_and(GatewayTls::is_mtls)
    }

    fn validate_dhcp(&self) -> Result<(), ConfigError> {
        if self.dhcp_leases_file.is_none() {
            return Ok(());
        }
        ensure(
            self.dhcp_hosts_file.is_some(),
            "GATEWAY_DHCP_HOSTS_FILE",
            "a path, since GATEWAY_DHCP_LEASES_FILE is set",
        )?;
        ensure(
            self.dhcp_leases_file != self.dhcp_hosts_file,
            "GATEWAY_DHCP_HOSTS_FILE",
            "a path other than GATEWAY_DHCP_LEASES_FILE",
        )?;
        range(
            "GATEWAY_DHCP_RECONCILE_MS",
            self.dhcp_reconcile_ms,
            10..=86_400_000,
        )?;
        ensure(
            (1..=100_000).contains(&self.dhcp_concurrency),
            "GATEWAY_DHCP_CONCURRENCY",
            "1 to 100000",
        )?;
        range(
            "GATEWAY_DHCP_CALL_TIMEOUT_MS",
            self.dhcp_call_timeout_ms,
            1..=3_600_000,
        )?;
        range(
            "GATEWAY_DHCP_RETRY_MAX_MS",
            self.dhcp_retry_max_ms,
            1..=86_400_000,
        )?;
        ensure(
            self.dhcp_vps_hostname_prefix.len() <= 63
                && self
                    .dhcp_vps_hostname_prefix
                    .starts_with(|c: char| c.is_ascii_alphanumeric())
                && self
                    .dhcp_vps_hostname_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')),
            "GATEWAY_DHCP_VPS_HOSTNAME_PREFIX",
            "up to 63 letters, digits, `-` or `.`, starting with a letter or digit",
        )?;
        if let Some(domain) = &self.dhcp_vps_domain {
            ensure(
                crate::dhcp::names::is_dns_name(domain.trim_matches('.')),
                "GATEWAY_DHCP_VPS_DOMAIN",
                "a DNS name such as `vms.example.net`",
            )?;
        }
        if self.dhcp_environments.is_some() {
            ensure(
                self.dhcp_environment_list()
                    .iter()
                    .all(|e| !e.is_empty() && e.len() <= 64),
                "GATEWAY_DHCP_ENVIRONMENTS",
                "comma-separated environment labels such as `prod` or `prod,beta`",
            )?;
        }
        ensure(
            (1..=4_194_304).contains(&self.dhcp_max_leases),
            "GATEWAY_DHCP_MAX_LEASES",
            "1 to 4194304",
        )
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

    /// The DHCP manager's settings, when `GATEWAY_DHCP_LEASES_FILE` turns
    /// it on.
    pub fn dhcp(&self) -> Option<DhcpConfig> {
        let config = self;
        let leases = config.dhcp_leases_file.clone()?;
        let hosts = config.dhcp_hosts_file.clone()?;
        Some(DhcpConfig {
            pid_file: config.dnsmasq_pid_file.clone(),
            reconcile: Duration::from_millis(config.dhcp_reconcile_ms),
            concurrency: config.dhcp_concurrency,
            call_timeout: Duration::from_millis(config.dhcp_call_timeout_ms),
            retry_max: Duration::from_millis(config.dhcp_retry_max_ms),
            namespace: Namespace {
                prefix: config.dhcp_vps_hostname_prefix.clone(),
                domain: config.dhcp_vps_domain.clone(),
                environments: config.dhcp_environment_list(),
            },
            trust_hostnames: config.dhcp_trust_hostnames,
            max_leases: config.dhcp_max_leases,
            ..DhcpConfig::new(leases, hosts)
        })
    }

    /// `GATEWAY_DHCP_ENVIRONMENTS` as a list; empty: any environment.
    pub fn dhcp_environment_list(&self) -> Vec<String> {
        self.dhcp_environments
            .iter()
            .flat_map(|list| list.split(','))
            .map(|e| e.trim().to_string())
            .collect()
    }

    pub fn gateway_id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "gateway".into())
        })
    }

    /// Where the gRPC port listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind_ip, self.grpc_port)
    }

    /// Where the operator HTTP endpoints listen.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.http_bind_ip, self.http_port)
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
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

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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
        assert_eq!(e, "GATEWAY_API_SECRET is required but not set");
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
        let e = error(&[("GATEWAY_DHCP_LEASE_FILE", "/l")]);
        assert!(e.ends_with("did you mean GATEWAY_DHCP_LEASES_FILE?"), "{e}");
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
            ("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", ""),
        ]))
        .unwrap();
        assert_eq!(c.grpc_port, 1537);
        assert_eq!(
            c.dhcp_vps_hostname_prefix, "vps-",
            "empty is unset: the default"
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

    #[test]
    fn dhcp_settings() {
        let c = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_DHCP_LEASES_FILE", "/var/lib/misc/dnsmasq.leases"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/run/gatemesh/hosts"),
        ]))
        .unwrap();
        assert_eq!(c.dhcp_reconcile_ms, 30_000);
        assert_eq!(c.dhcp_concurrency, 64);
        assert_eq!(c.dhcp_vps_hostname_prefix, "vps-");
        let e = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_DHCP_LEASES_FILE", "/var/lib/misc/dnsmasq.leases"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("GATEWAY_DHCP_HOSTS_FILE"), "{e}");
        let e = GatewayConfig::from_vars(vars(&[
            ("GATEWAY_API_SECRET", "s"),
            ("GATEWAY_DHCP_LEASES_FILE", "/l"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
            ("GATEWAY_DHCP_CONCURRENCY", "0"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("GATEWAY_DHCP_CONCURRENCY"), "{e}");
        assert!(!c.dhcp_trust_hostnames, "hostnames are the tenant's words");
        assert!(c.dhcp_environment_list().is_empty());
        assert_eq!(c.dhcp_max_leases, 262_144);
        let dhcp = |extra: &[(&str, &str)]| {
            let mut all = vec![
                ("GATEWAY_API_SECRET", "s"),
                ("GATEWAY_DHCP_LEASES_FILE", "/l"),
                ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
            ];
            all.extend_from_slice(extra);
            GatewayConfig::from_vars(vars(&all)).map_err(|e| e.to_string())
        };
        let c = dhcp(&[
            ("GATEWAY_DHCP_TRUST_HOSTNAMES", "true"),
            ("GATEWAY_DHCP_ENVIRONMENTS", "prod, beta"),
            ("GATEWAY_DHCP_VPS_DOMAIN", "vms.example.net"),
        ])
        .unwrap();
        assert!(c.dhcp_trust_hostnames);
        assert_eq!(c.dhcp_environment_list(), ["prod", "beta"]);
        assert!(
            !dhcp(&[("GATEWAY_DHCP_TRUST_HOSTNAMES", "false")])
                .unwrap()
                .dhcp_trust_hostnames
        );
        for (var, value) in [
            ("GATEWAY_DHCP_VPS_DOMAIN", "bad..domain"),
            ("GATEWAY_DHCP_ENVIRONMENTS", "prod,,beta"),
            ("GATEWAY_DHCP_MAX_LEASES", "0"),
            ("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "vps_"),
            ("GATEWAY_DHCP_TRUST_HOSTNAMES", "maybe"),
        ] {
            let e = dhcp(&[(var, value)]).unwrap_err();
            assert!(e.starts_with(var), "{var}={value}: {e}");
        }
    }

    #[test]
    fn ip_allocator_settings() {
        let ipam = |extra: &[(&str, &str)]| {
            let mut all = vec![("GATEWAY_API_SECRET", "s")];
            all.extend_from_slice(extra);
            GatewayConfig::from_vars(vars(&all)).map_err(|e| e.to_string())
        };
        assert!(ipam(&[]).unwrap().ipam().is_none(), "off by default");
        let c = ipam(&[
            ("GATEWAY_IP_POOL", "10.0.0.50-10.0.0.250"),
            ("GATEWAY_IP_POOL_EXCLUDE", "10.0.0.53"),
            (
                "GATEWAY_IP_RESERVATIONS_FILE",
                "/var/lib/gatemesh/vps.dhcp-hosts",
            ),
        ])
        .unwrap();
        let config = c.ipam().unwrap();
        assert_eq!(config.pool.size(), 200);
        assert!(!config.release_any_environment);
        for (extra, var) in [
            (
                vec![("GATEWAY_IP_POOL", "10.0.0.50-10.0.0.250")],
                "GATEWAY_IP_RESERVATIONS_FILE",
            ),
            (
                vec![("GATEWAY_IP_RESERVATIONS_FILE", "/r")],
                "GATEWAY_IP_POOL",
            ),
            (
                vec![
                    ("GATEWAY_IP_POOL", "10.0.0.250-10.0.0.50"),
                    ("GATEWAY_IP_RESERVATIONS_FILE", "/r"),
                ],
                "GATEWAY_IP_POOL",
            ),
            (
                vec![
                    ("GATEWAY_IP_POOL", "10.0.0.0/8"),
                    ("GATEWAY_IP_RESERVATIONS_FILE", "/r"),
                ],
                "GATEWAY_IP_POOL",
            ),
            (
                vec![
                    ("GATEWAY_IP_POOL", "10.0.0.1"),
                    ("GATEWAY_IP_POOL_EXCLUDE", "10.0.0.1"),
                    ("GATEWAY_IP_RESERVATIONS_FILE", "/r"),
                ],
                "GATEWAY_IP_POOL_EXCLUDE",
            ),
            (
                vec![
                    ("GATEWAY_IP_POOL", "10.0.0.1"),
                    ("GATEWAY_IP_POOL_EXCLUDE", "nope"),
                    ("GATEWAY_IP_RESERVATIONS_FILE", "/r"),
                ],
                "GATEWAY_IP_POOL_EXCLUDE",
            ),
            (
                vec![
                    ("GATEWAY_IP_POOL", "10.0.0.1"),
                    ("GATEWAY_IP_RESERVATIONS_FILE", "/h"),
                    ("GATEWAY_DHCP_LEASES_FILE", "/l"),
                    ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
                ],
                "GATEWAY_IP_RESERVATIONS_FILE",
            ),
            (
                vec![("GATEWAY_IP_RELEASE_ANY_ENVIRONMENT", "sure")],
                "GATEWAY_IP_RELEASE_ANY_ENVIRONMENT",
            ),
        ] {
            let e = ipam(&extra).unwrap_err();
            assert!(e.starts_with(var), "{extra:?}: {e}");
        }
    }
}
