//! The VPS inventory behind `FindVPSByLease`: which VPS owns a MAC or an IP.
//!
//! - [`memory`]: [`MemoryInventory`], the embedded default, from a file.
//! - [`postgres`]: [`PostgresInventory`], a PostgreSQL table behind a
//!   connection pool (`VPS_DATABASE_URL`).

pub mod memory;
pub mod postgres;

use async_trait::async_trait;
use serde::Deserialize;

pub use memory::MemoryInventory;
pub use postgres::PostgresInventory;

/// One VPS and the lease it holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vps {
    pub vps_id: String,
    pub organization_id: String,
    pub mac: String,
    pub ip: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("inventory file {path} is not valid {format}: {message}")]
    Parse {
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("inventory file {path}: {message}")]
    Invalid { path: String, message: String },
    #[error("inventory backend failed: {0}")]
    Backend(String),
    #[error("cannot reach the inventory database {target}: {message}")]
    Unreachable { target: String, message: String },
    #[error("VPS_DATABASE_URL is not a usable PostgreSQL URL: {0}")]
    BadUrl(String),
}

/// Where VPS records come from.
#[async_trait]
pub trait Inventory: Send + Sync + 'static {
    /// The VPS holding this lease: looked up by MAC first, then by IP.
    async fn find_by_lease(&self, ip: &str, mac: &str) -> Result<Option<Vps>, InventoryError>;
}

/// MACs compare case-insensitively and with `-` or `:` separators alike.
pub fn normalize_mac(mac: &str) -> String {
    mac.trim().to_ascii_lowercase().replace('-', ":")
}
