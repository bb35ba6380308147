//! [`DhcpSettings`]: the DHCP manager's own section of the node's
//! `GATEWAY_*` variables (`GATEWAY_DHCP_*`), checked on its own; the node
//! adds what other sections own (dnsmasq's pid file) to make a
//! [`DhcpConfig`].

use std::path::PathBuf;
use std::time::Duration;

use gatemesh_dnsmasq::Namespace;
use gatemesh_dnsmasq::names::is_dns_name;
use gatemesh_runtime::ConfigError;
use gatemesh_runtime::env::{ensure, range};
use serde::Deserialize;

use crate::DhcpConfig;

/// The `GATEWAY_DHCP_*` variables, read by `gatemesh_runtime::env::Env`.
#[derive(Debug, Clone, Deserialize)]
pub struct DhcpSettings {
    /// `GATEWAY_DHCP_LEASES_FILE`: dnsmasq's lease file; setting it turns
    /// the DHCP manager on.
    #[serde(default)]
    pub dhcp_leases_file: Option<PathBuf>,
    /// `GATEWAY_DHCP_HOSTS_FILE`: the `addn-hosts` file the manager writes.
    #[serde(default)]
    pub dhcp_hosts_file: Option<PathBuf>,
    /// `GATEWAY_DHCP_RECONCILE_MS`: full re-read of the lease file, a
    /// safety net under the file watch.
    #[serde(default = "defaults::reconcile_ms")]
    pub dhcp_reconcile_ms: u64,
    /// `GATEWAY_DHCP_CONCURRENCY`: lease resolutions in flight at once.
    #[serde(default = "defaults::concurrency")]
    pub dhcp_concurrency: usize,
    /// `GATEWAY_DHCP_CALL_TIMEOUT_MS`: deadline of one lease resolution.
    #[serde(default = "defaults::call_timeout_ms")]
    pub dhcp_call_timeout_ms: u64,
    /// `GATEWAY_DHCP_RETRY_MAX_MS`: cap of the backoff between attempts
    /// at a lease nobody knows yet.
    #[serde(default = "defaults::retry_max_ms")]
    pub dhcp_retry_max_ms: u64,
    /// `GATEWAY_DHCP_VPS_HOSTNAME_PREFIX`: every name written to the
    /// hosts file starts with this (the VPS namespace); with
    /// `GATEWAY_DHCP_TRUST_HOSTNAMES`, also the hostnames taken as names.
    /// The IP allocator names VMs in the same namespace.
    #[serde(default = "defaults::vps_hostname_prefix")]
    pub dhcp_vps_hostname_prefix: String,
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
    #[serde(default = "defaults::max_leases")]
    pub dhcp_max_leases: usize,
}

mod defaults {
    pub fn reconcile_ms() -> u64 {
        30_000
    }
    pub fn concurrency() -> usize {
        64
    }
    pub fn call_timeout_ms() -> u64 {
        2_000
    }
    pub fn retry_max_ms() -> u64 {
        60_000
    }
    pub fn vps_hostname_prefix() -> String {
        "vps-".into()
    }
    pub fn max_leases() -> usize {
        262_144
    }
}

impl Default for DhcpSettings {
    /// The manager off, every other setting at its default.
    fn default() -> Self {
        Self {
            dhcp_leases_file: None,
            dhcp_hosts_file: None,
            dhcp_reconcile_ms: defaults::reconcile_ms(),
            dhcp_concurrency: defaults::concurrency(),
            dhcp_call_timeout_ms: defaults::call_timeout_ms(),
            dhcp_retry_max_ms: defaults::retry_max_ms(),
            dhcp_vps_hostname_prefix: defaults::vps_hostname_prefix(),
            dhcp_vps_domain: None,
            dhcp_trust_hostnames: false,
            dhcp_environments: None,
            dhcp_max_leases: defaults::max_leases(),
        }
    }
}

impl DhcpSettings {
    /// Checks the section, when `GATEWAY_DHCP_LEASES_FILE` turns the
    /// manager on; errors name the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        let prefix = &self.dhcp_vps_hostname_prefix;
        ensure(
            prefix.len() <= 63
                && prefix.starts_with(|c: char| c.is_ascii_alphanumeric())
                && prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')),
            "GATEWAY_DHCP_VPS_HOSTNAME_PREFIX",
            "up to 63 letters, digits, `-` or `.`, starting with a letter or digit",
        )?;
        if let Some(domain) = &self.dhcp_vps_domain {
            ensure(
                is_dns_name(domain.trim_matches('.')),
                "GATEWAY_DHCP_VPS_DOMAIN",
                "a DNS name such as `vms.example.net`",
            )?;
        }
        if self.dhcp_environments.is_some() {
            ensure(
                self.environment_list()
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

    /// The manager's config, when `GATEWAY_DHCP_LEASES_FILE` turns it on;
    /// `pid_file` is dnsmasq's (`GATEWAY_DNSMASQ_PID_FILE`), for the reload.
    pub fn config(&self, pid_file: Option<PathBuf>) -> Option<DhcpConfig> {
        let leases = self.dhcp_leases_file.clone()?;
        let hosts = self.dhcp_hosts_file.clone()?;
        Some(DhcpConfig {
            pid_file,
            reconcile: Duration::from_millis(self.dhcp_reconcile_ms),
            concurrency: self.dhcp_concurrency,
            call_timeout: Duration::from_millis(self.dhcp_call_timeout_ms),
            retry_max: Duration::from_millis(self.dhcp_retry_max_ms),
            namespace: Namespace {
                prefix: self.dhcp_vps_hostname_prefix.clone(),
                domain: self.dhcp_vps_domain.clone(),
                environments: self.environment_list(),
            },
            trust_hostnames: self.dhcp_trust_hostnames,
            max_leases: self.dhcp_max_leases,
            ..DhcpConfig::new(leases, hosts)
        })
    }

    /// `GATEWAY_DHCP_ENVIRONMENTS` as a list; empty: any environment.
    pub fn environment_list(&self) -> Vec<String> {
        self.dhcp_environments
            .iter()
            .flat_map(|list| list.split(','))
            .map(|e| e.trim().to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_runtime::env::{Env, vars};

    fn dhcp(list: &[(&str, &str)]) -> Result<DhcpSettings, String> {
        let settings: DhcpSettings = Env::new("GATEWAY_", vars(list))
            .section()
            .map_err(|e| e.to_string())?;
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }

    #[test]
    fn dhcp_settings() {
        let on = [
            ("GATEWAY_DHCP_LEASES_FILE", "/var/lib/misc/dnsmasq.leases"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/run/gatemesh/hosts"),
        ];
        let c = dhcp(&on).unwrap();
        assert_eq!(c.dhcp_reconcile_ms, 30_000);
        assert_eq!(c.dhcp_concurrency, 64);
        assert_eq!(c.dhcp_vps_hostname_prefix, "vps-");
        assert!(c.config(None).is_some());
        assert!(dhcp(&[]).unwrap().config(None).is_none(), "off by default");
        let e = dhcp(&on[..1]).unwrap_err();
        assert!(e.starts_with("GATEWAY_DHCP_HOSTS_FILE"), "{e}");
        let e = dhcp(&[
            ("GATEWAY_DHCP_LEASES_FILE", "/l"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
            ("GATEWAY_DHCP_CONCURRENCY", "0"),
        ])
        .unwrap_err();
        assert!(e.starts_with("GATEWAY_DHCP_CONCURRENCY"), "{e}");
        assert!(!c.dhcp_trust_hostnames, "hostnames are the tenant's words");
        assert!(c.environment_list().is_empty());
        assert_eq!(c.dhcp_max_leases, 262_144);
        let with = |extra: &[(&str, &str)]| {
            let mut all = vec![
                ("GATEWAY_DHCP_LEASES_FILE", "/l"),
                ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
            ];
            all.extend_from_slice(extra);
            dhcp(&all)
        };
        let c = with(&[
            ("GATEWAY_DHCP_TRUST_HOSTNAMES", "true"),
            ("GATEWAY_DHCP_ENVIRONMENTS", "prod, beta"),
            ("GATEWAY_DHCP_VPS_DOMAIN", "vms.example.net"),
        ])
        .unwrap();
        assert!(c.dhcp_trust_hostnames);
        assert_eq!(c.environment_list(), ["prod", "beta"]);
        let config = c.config(Some("/run/dnsmasq.pid".into())).unwrap();
        assert_eq!(config.namespace.environments, ["prod", "beta"]);
        assert_eq!(
            config.pid_file.as_deref(),
            Some("/run/dnsmasq.pid".as_ref())
        );
        assert!(
            !with(&[("GATEWAY_DHCP_TRUST_HOSTNAMES", "false")])
                .unwrap()
                .dhcp_trust_hostnames
        );
        let c = with(&[("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "")]).unwrap();
        assert_eq!(
            c.dhcp_vps_hostname_prefix, "vps-",
            "empty is unset: the default"
        );
        for (var, value) in [
            ("GATEWAY_DHCP_VPS_DOMAIN", "bad..domain"),
            ("GATEWAY_DHCP_ENVIRONMENTS", "prod,,beta"),
            ("GATEWAY_DHCP_MAX_LEASES", "0"),
            ("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "vps_"),
            ("GATEWAY_DHCP_TRUST_HOSTNAMES", "maybe"),
        ] {
            let e = with(&[(var, value)]).unwrap_err();
            assert!(e.starts_with(var), "{var}={value}: {e}");
        }
    }
}
