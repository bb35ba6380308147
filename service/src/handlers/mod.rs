//! Handlers that `vps-service` serves, one file each.

mod find_vps_by_lease;
mod ping;

pub use find_vps_by_lease::FindVpsByLeaseHandler;
pub use ping::ping;
