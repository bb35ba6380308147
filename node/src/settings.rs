//! [`NodeSettings`]: everything `vps-gateway` reads, from `GATEWAY_*`
//! variables, by one loader ([`Env`]): each concern's section is its own
//! (the gateway's and the operator side's in `gatemesh-gateway` and
//! `gatemesh-runtime`, `GATEWAY_DHCP_*` in `gatemesh-dhcp`, `GATEWAY_IP_*`
//! in `gatemesh-ipam`, `GATEWAY_DNSMASQ_PID_FILE` in `gatemesh-dnsmasq`);
//! a variable that names no field of any section stops the binary naming
//! the nearest across all of them; and the checks that span sections are
//! here, where every section is known.

use std::path::PathBuf;

use gatemesh_dhcp::{DhcpConfig, DhcpSettings};
use gatemesh_dnsmasq::DnsmasqSettings;
use gatemesh_gateway::GatewayConfig;
use gatemesh_gateway::config::PREFIX;
use gatemesh_ipam::{IpamConfig, IpamSettings};
use gatemesh_runtime::ConfigError;
use gatemesh_runtime::env::{Env, ensure, fields};

/// A node's settings, section by section.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub gateway: GatewayConfig,
    pub dnsmasq: DnsmasqSettings,
    pub dhcp: DhcpSettings,
    pub ipam: IpamSettings,
}

impl NodeSettings {
    /// `gateway` alone: the DHCP manager and the allocator off, until a
    /// test or an embedding program sets their sections.
    pub fn new(gateway: GatewayConfig) -> Self {
        Self {
            gateway,
            dnsmasq: DnsmasqSettings::default(),
            dhcp: DhcpSettings::default(),
            ipam: IpamSettings::default(),
        }
    }

    /// Reads and checks every section from `vars` (the process
    /// environment in `main`); errors name the variable.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = Env::new(PREFIX, vars);
        let [gateway, ops] = GatewayConfig::sections();
        env.check_known(&[
            gateway,
            ops,
            fields::<DnsmasqSettings>(),
            fields::<DhcpSettings>(),
            fields::<IpamSettings>(),
        ])?;
        let settings = Self {
            gateway: GatewayConfig::from_env(&env)?,
            dnsmasq: env.section()?,
            dhcp: env.section()?,
            ipam: env.section()?,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The sections' own checks, then those that span sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.ipam.validate()?;
        if let Some(file) = &self.ipam.ip_reservations_file {
            ensure(
                Some(file) != self.dhcp.dhcp_hosts_file.as_ref()
                    && Some(file) != self.dhcp.dhcp_leases_file.as_ref(),
                "GATEWAY_IP_RESERVATIONS_FILE",
                "a path other than GATEWAY_DHCP_HOSTS_FILE and GATEWAY_DHCP_LEASES_FILE",
            )?;
        }
        self.dhcp.validate()
    }

    fn pid_file(&self) -> Option<PathBuf> {
        self.dnsmasq.dnsmasq_pid_file.clone()
    }

    /// The DHCP manager's config, when `GATEWAY_DHCP_LEASES_FILE` turns it
    /// on; it reloads dnsmasq through `GATEWAY_DNSMASQ_PID_FILE`.
    pub fn dhcp(&self) -> Option<DhcpConfig> {
        self.dhcp.config(self.pid_file())
    }

    /// The IP allocator's config, when `GATEWAY_IP_POOL` turns it on. It
    /// checks leases in `GATEWAY_DHCP_LEASES_FILE`, reloads dnsmasq
    /// through `GATEWAY_DNSMASQ_PID_FILE`, and names VMs in the DHCP
    /// manager's VPS namespace, as the manager does.
    pub fn ipam(&self) -> Option<IpamConfig> {
        self.ipam.config(
            self.dhcp.dhcp_leases_file.clone(),
            self.pid_file(),
            &self.dhcp.dhcp_vps_hostname_prefix,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_runtime::env::vars;

    fn node(list: &[(&str, &str)]) -> Result<NodeSettings, String> {
        let mut all = vec![("GATEWAY_API_SECRET", "s")];
        all.extend_from_slice(list);
        NodeSettings::from_vars(vars(&all)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_misspelt_variable_names_the_nearest_of_every_section() {
        for (typo, nearest) in [
            ("GATEWAY_GRPC_PROT", "GATEWAY_GRPC_PORT"),
            ("GATEWAY_HTTP_PROT", "GATEWAY_HTTP_PORT"),
            ("GATEWAY_DHCP_LEASE_FILE", "GATEWAY_DHCP_LEASES_FILE"),
            ("GATEWAY_IP_POLL", "GATEWAY_IP_POOL"),
            ("GATEWAY_DNSMASQ_PIDFILE", "GATEWAY_DNSMASQ_PID_FILE"),
        ] {
            assert_eq!(
                node(&[(typo, "1")]).unwrap_err(),
                format!("{typo}: unknown variable; did you mean {nearest}?")
            );
        }
    }

    #[test]
    fn each_section_reads_its_own_variables() {
        let s = node(&[
            ("GATEWAY_GRPC_PORT", "1600"),
            ("GATEWAY_HTTP_PORT", "9100"),
            ("GATEWAY_DNSMASQ_PID_FILE", "/run/dnsmasq.pid"),
            ("GATEWAY_DHCP_LEASES_FILE", "/var/lib/misc/dnsmasq.leases"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/run/gatemesh/vps.hosts"),
            ("GATEWAY_DHCP_VPS_HOSTNAME_PREFIX", "vm-"),
            ("GATEWAY_IP_POOL", "10.0.0.50-10.0.0.59"),
            (
                "GATEWAY_IP_RESERVATIONS_FILE",
                "/var/lib/gatemesh/vps.dhcp-hosts",
            ),
        ])
        .unwrap();
        assert_eq!(s.gateway.grpc_port, 1600);
        assert_eq!(s.gateway.http_addr().port(), 9100);
        let dhcp = s.dhcp().unwrap();
        assert_eq!(dhcp.pid_file.as_deref(), Some("/run/dnsmasq.pid".as_ref()));
        let ipam = s.ipam().unwrap();
        assert_eq!(ipam.pool.size(), 10);
        assert_eq!(ipam.leases_file, Some(dhcp.leases_file));
        assert_eq!(ipam.pid_file, dhcp.pid_file);
        assert_eq!(ipam.hostname_prefix, "vm-");
        let off = node(&[]).unwrap();
        assert!(off.dhcp().is_none() && off.ipam().is_none());
    }

    #[test]
    fn the_reservations_file_is_none_of_the_dhcp_managers_files() {
        let e = node(&[
            ("GATEWAY_IP_POOL", "10.0.0.1"),
            ("GATEWAY_IP_RESERVATIONS_FILE", "/h"),
            ("GATEWAY_DHCP_LEASES_FILE", "/l"),
            ("GATEWAY_DHCP_HOSTS_FILE", "/h"),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            "GATEWAY_IP_RESERVATIONS_FILE: expected a path other than \
             GATEWAY_DHCP_HOSTS_FILE and GATEWAY_DHCP_LEASES_FILE"
        );
    }
}
