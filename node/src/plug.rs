//! How a running component joins a gateway, through the gateway's public
//! extension points only: its `/metrics` families (a collector, under the
//! gateway's `gatemesh_gateway_` prefix) and its `/health` reason. Its
//! gateway methods are registered on the `GatewayRegistry` before the
//! gateway is built. Each component is plugged once per gateway.

use gatemesh_dhcp::DhcpHandle;
use gatemesh_gateway::Gateway;
use gatemesh_ipam::Ipam;

/// The DHCP manager: `gatemesh_gateway_dhcp_*`, and `/health` degraded
/// with `dhcp: ...` while it has a problem.
pub fn dhcp(gateway: &Gateway, handle: &DhcpHandle) {
    gateway
        .metrics()
        .register_collector(gatemesh_dhcp::metrics::collector(handle.clone()));
    let handle = handle.clone();
    gateway.add_health_check("dhcp", move || gatemesh_dhcp::problem(&handle.status()));
}

/// The IP allocator: `gatemesh_gateway_ipam_*`, and `/health` degraded
/// with `ipam: ...` while it has a problem.
pub fn ipam(gateway: &Gateway, ipam: &Ipam) {
    gateway
        .metrics()
        .register_collector(gatemesh_ipam::metrics::collector(ipam.clone()));
    let ipam = ipam.clone();
    gateway.add_health_check("ipam", move || ipam.problem());
}
