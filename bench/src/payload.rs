//! The payload of every scenario: a real `FindVPSByLease` request, and the
//! small in-memory inventories behind it. One instance (the owner) holds the
//! lease; the others answer "not mine", as in production, where a lease
//! belongs to one environment.

use gatemesh_proto::pb::FindVpsByLeaseRequest;
use gatemesh_service::inventory::{MemoryInventory, Vps};

pub const LEASE_IP: &str = "10.0.0.42";
pub const LEASE_MAC: &str = "52:54:00:12:00:2a";
pub const LEASE_VPS: &str = "vps-prod-0042";

/// NATS subject the responders listen on.
pub const NATS_SUBJECT: &str = "gatemesh.bench.FindVPSByLease";

pub fn request() -> FindVpsByLeaseRequest {
    FindVpsByLeaseRequest {
        ip: LEASE_IP.into(),
        mac: LEASE_MAC.into(),
    }
}

/// 64 VPSes; the owner's include the bench lease.
pub fn inventory(owner: bool) -> MemoryInventory {
    let base = if owner { 0 } else { 64 };
    MemoryInventory::new((base..base + 64).map(|n| Vps {
        vps_id: format!("vps-prod-{n:04}"),
        organization_id: "org-bench".into(),
        mac: format!("52:54:00:12:{:02x}:{:02x}", n / 256, n % 256),
        ip: format!("10.0.{}.{}", n / 256, n % 256),
    }))
}
