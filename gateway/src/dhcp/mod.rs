//! The DHCP manager: watches dnsmasq's leases, resolves each to a VPS id
//! through the mesh, and keeps dnsmasq's `addn-hosts` file in step.
//!
//! - [`leases`]: the lease file parser.

pub mod leases;
