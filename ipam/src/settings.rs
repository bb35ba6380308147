//! The allocator's settings: [`IpamSettings`], its own section of the
//! node's `GATEWAY_*` variables (`GATEWAY_IP_*`), and [`IpamConfig`], what
//! the allocator runs with once the node has added what other sections
//! own (dnsmasq's lease and pid files, the VPS hostname prefix).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gatemesh_dnsmasq::Settle;
use gatemesh_runtime::ConfigError;
use gatemesh_runtime::env::{check_label, ensure};
use serde::Deserialize;

use crate::{Pool, PoolError};

/// The `GATEWAY_IP_*` variables, read by `gatemesh_runtime::env::Env`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct IpamSettings {
    /// `GATEWAY_IP_POOL`: the addresses this gateway allocates to VPSs
    /// (`10.0.0.50-10.0.0.250`, CIDR blocks and single addresses,
    /// comma-separated); setting it turns the IP allocator on.
    #[serde(default)]
    pub ip_pool: Option<String>,
    /// `GATEWAY_IP_POOL_EXCLUDE`: addresses of the pool never allocated,
    /// in the same syntax, besides the node's own (always excluded).
    #[serde(default)]
    pub ip_pool_exclude: Option<String>,
    /// `GATEWAY_IP_QUOTA`: addresses each environment may hold at most,
    /// `prod:200,dev:20`; `*:N` for every environment not named. Unset:
    /// no quota.
    #[serde(default)]
    pub ip_quota: Option<String>,
    /// `GATEWAY_IP_RESERVATIONS_FILE`: the dnsmasq `dhcp-hostsfile` the
    /// allocator writes and keeps its state in.
    #[serde(default)]
    pub ip_reservations_file: Option<PathBuf>,
    /// `GATEWAY_IP_RELEASE_ANY_ENVIRONMENT`: a release from another
    /// environment than the allocator's is allowed. Off by default.
    #[serde(default)]
    pub ip_release_any_environment: bool,
}

impl IpamSettings {
    /// Checks the section on its own; that the reservations file is none
    /// of the DHCP manager's files is the node's check, which knows both.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(pool) = &self.ip_pool else {
            ensure(
                self.ip_reservations_file.is_none()
                    && self.ip_pool_exclude.is_none()
                    && self.ip_quota.is_none(),
                "GATEWAY_IP_POOL",
                "a pool such as `10.0.0.50-10.0.0.250`, since GATEWAY_IP_RESERVATIONS_FILE, \
                 GATEWAY_IP_POOL_EXCLUDE or GATEWAY_IP_QUOTA is set",
            )?;
            return Ok(());
        };
        Quota::parse(self.ip_quota.as_deref().unwrap_or(""))?;
        Pool::parse(pool, "").map_err(|e| {
            ConfigError(format!(
                "GATEWAY_IP_POOL: {e}; expected ranges such as `10.0.0.50-10.0.0.250,10.0.1.0/28`"
            ))
        })?;
        let exclude = self.ip_pool_exclude.as_deref().unwrap_or("");
        Pool::parse(exclude, "")
            .map(drop)
            .or_else(|e| match e {
                PoolError::Empty | PoolError::TooLarge(_) => Ok(()),
                e => Err(e),
            })
            .map_err(|e| ConfigError(format!("GATEWAY_IP_POOL_EXCLUDE: {e}")))?;
        Pool::parse(pool, exclude)
            .map_err(|e| ConfigError(format!("GATEWAY_IP_POOL_EXCLUDE: {e}")))?;
        if self.ip_reservations_file.is_none() {
            return Err(ConfigError(
                "GATEWAY_IP_RESERVATIONS_FILE: expected a path, since GATEWAY_IP_POOL is set"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The allocator's config, when `GATEWAY_IP_POOL` turns it on. It
    /// checks leases in `leases_file` and reloads dnsmasq through
    /// `pid_file`, as the DHCP manager does, and names VMs in the VPS
    /// namespace `hostname_prefix`.
    pub fn config(
        &self,
        leases_file: Option<PathBuf>,
        pid_file: Option<PathBuf>,
        hostname_prefix: &str,
    ) -> Option<IpamConfig> {
        let pool = Pool::parse(
            self.ip_pool.as_deref()?,
            self.ip_pool_exclude.as_deref().unwrap_or(""),
        )
        .ok()?;
        Some(IpamConfig {
            leases_file,
            pid_file,
            release_any_environment: self.ip_release_any_environment,
            hostname_prefix: hostname_prefix.to_string(),
            quota: Quota::parse(self.ip_quota.as_deref().unwrap_or("")).ok()?,
            exclude_node_addresses: true,
            ..IpamConfig::new(pool, self.ip_reservations_file.clone()?)
        })
    }
}

/// `GATEWAY_IP_QUOTA`: how many addresses each environment may hold, so
/// that one environment cannot take the whole pool. The admin API's
/// allocations (no environment) have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Quota {
    by_environment: BTreeMap<String, u64>,
    /// `*:N`: every environment not named.
    others: Option<u64>,
}

impl Quota {
    /// `prod:200,dev:20,*:10`; empty: no quota. Errors name the variable.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        const VAR: &str = "GATEWAY_IP_QUOTA";
        let mut quota = Self::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let bad = |why: &str| ConfigError(format!("{VAR}: {item:?}: {why}"));
            // An environment may hold `:`; the number follows the last one.
            let (environment, n) = item
                .rsplit_once(':')
                .ok_or_else(|| bad("expected ENVIRONMENT:ADDRESSES, e.g. prod:200"))?;
            let n: u64 = n
                .parse()
                .ok()
                .filter(|n| *n <= crate::pool::MAX_POOL)
                .ok_or_else(|| bad("expected 0 to 65536 addresses after the last `:`"))?;
            let again = if environment == "*" {
                quota.others.replace(n).is_some()
            } else {
                check_label(VAR, environment, 64)?;
                quota.by_environment.insert(environment.into(), n).is_some()
            };
            if again {
                return Err(bad("that environment is given twice"));
            }
        }
        Ok(quota)
    }

    /// The most `environment` may hold; `None`: no limit.
    pub fn limit(&self, environment: &str) -> Option<u64> {
        if environment.is_empty() {
            return None;
        }
        self.by_environment
            .get(environment)
            .copied()
            .or(self.others)
    }
}

/// How the allocator waits for a lease file dnsmasq is rewriting: the
/// settle pause of the DHCP manager, and a few reads, since a batch of
/// requests waits for them.
pub const LEASE_SETTLE: Settle = Settle {
    pause: Duration::from_millis(20),
    attempts: 5,
};

/// What the allocator runs with.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub pool: Pool,
    /// The `dhcp-hostsfile` dnsmasq reads, which is also the allocator's
    /// state.
    pub reservations_file: PathBuf,
    /// dnsmasq's lease file: an address leased to another MAC is never
    /// handed out. Unset: leases are not checked.
    pub leases_file: Option<PathBuf>,
    /// How a read of the lease file waits for dnsmasq to finish a rewrite.
    pub lease_settle: Settle,
    /// dnsmasq's pid file, for the SIGHUP after each change.
    pub pid_file: Option<PathBuf>,
    /// A release from another environment than the allocator's is allowed.
    pub release_any_environment: bool,
    /// A VPS id starting with this (and a valid DNS label) is also the
    /// VM's DHCP hostname in the reservation.
    pub hostname_prefix: String,
    /// How many addresses each environment may hold.
    pub quota: Quota,
    /// The addresses of the node's own interfaces are taken out of the
    /// pool at start (read then, and logged). On in the node; off by
    /// default, so a test's pool is what it says.
    pub exclude_node_addresses: bool,
}

impl IpamConfig {
    /// Defaults around a pool and the file.
    pub fn new(pool: Pool, reservations_file: impl Into<PathBuf>) -> Self {
        Self {
            pool,
            reservations_file: reservations_file.into(),
            leases_file: None,
            lease_settle: LEASE_SETTLE,
            pid_file: None,
            release_any_environment: false,
            hostname_prefix: "vps-".into(),
            quota: Quota::default(),
            exclude_node_addresses: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_runtime::env::{Env, vars};

    #[test]
    fn quotas_per_environment_and_for_the_others() {
        let quota = Quota::parse(" prod:200, dev:20 ,eu:west:5,*:3").unwrap();
        assert_eq!(quota.limit("prod"), Some(200));
        assert_eq!(quota.limit("eu:west"), Some(5));
        assert_eq!(quota.limit("beta"), Some(3), "`*` is every other");
        assert_eq!(quota.limit(""), None, "the admin API has none");
        let named = Quota::parse("prod:200").unwrap();
        assert_eq!(named.limit("beta"), None, "not named, no `*`: no quota");
        assert_eq!(Quota::parse("").unwrap(), Quota::default());
        for (bad, why) in [
            ("prod", "expected ENVIRONMENT:ADDRESSES"),
            ("prod:many", "expected 0 to 65536 addresses"),
            ("prod:70000", "expected 0 to 65536 addresses"),
            ("prod:1,prod:2", "given twice"),
            ("*:1,*:2", "given twice"),
        ] {
            let e = Quota::parse(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("GATEWAY_IP_QUOTA: ") && e.contains(why),
                "{bad}: {e}"
            );
        }
        let e = Quota::parse("pr od:1").unwrap_err().to_string();
        assert!(
            e.starts_with("GATEWAY_IP_QUOTA: expected 1 to 64 bytes"),
            "{e}"
        );
    }

    fn ipam(list: &[(&str, &str)]) -> Result<IpamSettings, String> {
        let settings: IpamSettings = Env::new("GATEWAY_", vars(list))
            .section()
            .map_err(|e| e.to_string())?;
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }

    #[test]
    fn ip_allocator_settings() {
        let off = ipam(&[]).unwrap();
        assert!(off.config(None, None, "vps-").is_none(), "off by default");
        let on = ipam(&[
            ("GATEWAY_IP_POOL", "10.0.0.50-10.0.0.250"),
            ("GATEWAY_IP_POOL_EXCLUDE", "10.0.0.53"),
            (
                "GATEWAY_IP_RESERVATIONS_FILE",
                "/var/lib/gatemesh/vps.dhcp-hosts",
            ),
        ])
        .unwrap();
        let config = on.config(None, None, "vps-").unwrap();
        assert_eq!(config.pool.size(), 200);
        assert!(!config.release_any_environment);
        assert!(config.exclude_node_addresses, "always, in the node");
        assert_eq!(config.quota, Quota::default());
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
                vec![("GATEWAY_IP_RELEASE_ANY_ENVIRONMENT", "sure")],
                "GATEWAY_IP_RELEASE_ANY_ENVIRONMENT",
            ),
            (vec![("GATEWAY_IP_QUOTA", "dev:2")], "GATEWAY_IP_POOL"),
        ] {
            let e = ipam(&extra).unwrap_err();
            assert!(e.starts_with(var), "{extra:?}: {e}");
        }
    }
}
