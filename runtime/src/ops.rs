//! [`OpsSettings`]: the operator-facing settings both binaries read the
//! same way, each under its own prefix: the operator HTTP endpoints
//! (`/health`, `/metrics`, ...) and the log format. Only the defaults
//! differ ([`OpsDefaults`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::ConfigError;
use crate::env::{Env, bind_addr, ensure, fields, range};
use crate::http::HttpLimits;

/// The variables, as given.
#[derive(Debug, Deserialize)]
struct OpsVars {
    #[serde(default)]
    http_port: Option<u16>,
    #[serde(default)]
    http_bind: Option<String>,
    #[serde(default)]
    http_timeout_ms: Option<u64>,
    #[serde(default)]
    http_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    http_max_connections: Option<usize>,
    #[serde(default)]
    log_format: Option<String>,
}

/// A binary's own defaults for [`OpsSettings`].
#[derive(Debug, Clone, Copy)]
pub struct OpsDefaults {
    /// `None`: the endpoints are off unless the port is set.
    pub http_port: Option<u16>,
    pub http_bind: &'static str,
}

/// The operator side's settings, checked, with the bind address resolved.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// `<PREFIX>HTTP_PORT`: the operator endpoints, plain HTTP even when
    /// gRPC uses TLS; `None`: off.
    pub http_port: Option<u16>,
    /// `<PREFIX>HTTP_BIND`: their address, an IP address or a host name
    /// resolved at start.
    pub http_bind: String,
    http_bind_ip: IpAddr,
    /// `<PREFIX>HTTP_TIMEOUT_MS`: an HTTP connection must send a
    /// request's headers within this, and an idle keep-alive connection is
    /// closed after it.
    pub http_timeout_ms: u64,
    /// `<PREFIX>HTTP_IDLE_TIMEOUT_MS`: a connection on which no byte moves
    /// for this long, no request of it being handled, is closed.
    pub http_idle_timeout_ms: u64,
    /// `<PREFIX>HTTP_MAX_CONNECTIONS`: connections open at most; unset,
    /// derived from the descriptor limit at start
    /// ([`crate::http::default_max_connections`]).
    pub http_max_connections: Option<usize>,
    /// `<PREFIX>LOG_FORMAT`: `text` or `json`.
    pub log_format: Option<String>,
}

const HTTP_TIMEOUT_MS: u64 = 5_000;
const HTTP_IDLE_TIMEOUT_MS: u64 = 30_000;

impl OpsSettings {
    /// The names of the section's variables, after the prefix.
    pub fn fields() -> &'static [&'static str] {
        fields::<OpsVars>()
    }

    /// Reads and checks the section; errors name the variable.
    pub fn from_env(env: &Env, defaults: OpsDefaults) -> Result<Self, ConfigError> {
        let vars: OpsVars = env.section()?;
        let prefix = env.prefix();
        let http_port = vars.http_port.or(defaults.http_port);
        if let Some(port) = http_port {
            range(&format!("{prefix}HTTP_PORT"), port, 1..=65535)?;
        }
        let http_timeout_ms = vars.http_timeout_ms.unwrap_or(HTTP_TIMEOUT_MS);
        range(
            &format!("{prefix}HTTP_TIMEOUT_MS"),
            http_timeout_ms,
            100..=600_000,
        )?;
        let http_idle_timeout_ms = vars.http_idle_timeout_ms.unwrap_or(HTTP_IDLE_TIMEOUT_MS);
        range(
            &format!("{prefix}HTTP_IDLE_TIMEOUT_MS"),
            http_idle_timeout_ms,
            100..=600_000,
        )?;
        if let Some(max) = vars.http_max_connections {
            range(&format!("{prefix}HTTP_MAX_CONNECTIONS"), max, 1..=100_000)?;
        }
        if let Some(format) = &vars.log_format {
            ensure(
                matches!(format.as_str(), "text" | "json"),
                &format!("{prefix}LOG_FORMAT"),
                "`text` or `json`",
            )?;
        }
        let http_bind = vars
            .http_bind
            .unwrap_or_else(|| defaults.http_bind.to_string());
        let http_bind_ip = bind_addr(&format!("{prefix}HTTP_BIND"), &http_bind)?;
        Ok(Self {
            http_port,
            http_bind,
            http_bind_ip,
            http_timeout_ms,
            http_idle_timeout_ms,
            http_max_connections: vars.http_max_connections,
            log_format: vars.log_format,
        })
    }

    /// `<PREFIX>HTTP_BIND`, resolved.
    pub fn http_bind_ip(&self) -> IpAddr {
        self.http_bind_ip
    }

    /// Where the endpoints listen, when they are on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_port
            .map(|port| SocketAddr::new(self.http_bind_ip, port))
    }

    pub fn http_timeout(&self) -> Duration {
        Duration::from_millis(self.http_timeout_ms)
    }

    /// The HTTP server's deadlines and cap.
    pub fn http_limits(&self) -> HttpLimits {
        HttpLimits {
            header_timeout: self.http_timeout(),
            idle_timeout: Duration::from_millis(self.http_idle_timeout_ms),
            max_connections: self.http_max_connections,
        }
    }
}

impl Default for OpsSettings {
    /// Endpoints off, loopback, the default timeout, text logs.
    fn default() -> Self {
        Self {
            http_port: None,
            http_bind: "127.0.0.1".into(),
            http_bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            http_timeout_ms: HTTP_TIMEOUT_MS,
            http_idle_timeout_ms: HTTP_IDLE_TIMEOUT_MS,
            http_max_connections: None,
            log_format: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::vars;

    const GATEWAY: OpsDefaults = OpsDefaults {
        http_port: Some(9091),
        http_bind: "127.0.0.1",
    };

    fn ops(list: &[(&str, &str)]) -> Result<OpsSettings, String> {
        OpsSettings::from_env(&Env::new("X_", vars(list)), GATEWAY).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_ranges_and_formats_name_the_variable() {
        let ops_default = ops(&[]).unwrap();
        assert_eq!(
            ops_default.http_addr().unwrap().to_string(),
            "127.0.0.1:9091"
        );
        assert_eq!(ops_default.http_timeout(), Duration::from_secs(5));
        let off = OpsSettings::from_env(
            &Env::new("X_", vars(&[])),
            OpsDefaults {
                http_port: None,
                http_bind: "0.0.0.0",
            },
        )
        .unwrap();
        assert_eq!(off.http_addr(), None);
        assert_eq!(
            ops(&[("X_HTTP_PORT", "0")]).unwrap_err(),
            "X_HTTP_PORT=0: expected 1 to 65535"
        );
        assert_eq!(
            ops(&[("X_HTTP_TIMEOUT_MS", "1")]).unwrap_err(),
            "X_HTTP_TIMEOUT_MS=1: expected 100 to 600000"
        );
        assert_eq!(
            ops(&[("X_HTTP_IDLE_TIMEOUT_MS", "0")]).unwrap_err(),
            "X_HTTP_IDLE_TIMEOUT_MS=0: expected 100 to 600000"
        );
        assert_eq!(
            ops(&[("X_HTTP_MAX_CONNECTIONS", "0")]).unwrap_err(),
            "X_HTTP_MAX_CONNECTIONS=0: expected 1 to 100000"
        );
        let limits = ops_default.http_limits();
        assert_eq!(
            (limits.idle_timeout, limits.max_connections),
            (Duration::from_secs(30), None)
        );
        let set = ops(&[("X_HTTP_MAX_CONNECTIONS", "64")]).unwrap();
        assert_eq!(set.http_limits().max_connections, Some(64));
        assert_eq!(
            ops(&[("X_LOG_FORMAT", "xml")]).unwrap_err(),
            "X_LOG_FORMAT: expected `text` or `json`"
        );
        let e = ops(&[("X_HTTP_BIND", "no-such-host.invalid")]).unwrap_err();
        assert!(e.starts_with("X_HTTP_BIND=no-such-host.invalid: "), "{e}");
        let local = ops(&[("X_HTTP_BIND", "localhost"), ("X_HTTP_PORT", "9100")]).unwrap();
        assert!(local.http_addr().unwrap().ip().is_loopback());
    }
}
