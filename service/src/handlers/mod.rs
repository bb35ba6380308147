//! Handlers that `vps-service` serves, one file each.

mod find_vps_by_lease;

pub use find_vps_by_lease::FindVpsByLeaseHandler;
