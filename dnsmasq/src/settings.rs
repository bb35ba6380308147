//! The node's dnsmasq settings section, read from `GATEWAY_*` variables
//! beside the others (see `gatemesh_runtime::env::Env`).

use std::path::PathBuf;

use serde::Deserialize;

/// What the node knows of the dnsmasq it feeds.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DnsmasqSettings {
    /// `GATEWAY_DNSMASQ_PID_FILE`: dnsmasq's pid file, to SIGHUP it after
    /// a file it reads changes (the DHCP manager's hosts file, the IP
    /// allocator's reservations); no reload when unset.
    #[serde(default)]
    pub dnsmasq_pid_file: Option<PathBuf>,
}
