//! [`PostgresInventory`]: VPS records in a PostgreSQL table, read through a
//! connection pool.
//!
//! The schema is created at start (idempotently, under an advisory lock so
//! instances starting together do not race): one row per VPS, indexed by
//! normalised MAC and by IP, so each lookup is one index probe.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::{Inventory, InventoryError, Vps, normalize_mac};

/// Creates the table and its indexes; safe to run any number of times.
pub const MIGRATION: &str = "
CREATE TABLE IF NOT EXISTS vps (
    vps_id          text PRIMARY KEY,
    organization_id text NOT NULL,
    mac             text NOT NULL DEFAULT '',
    ip              text NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS vps_mac_idx ON vps ((lower(replace(mac, '-', ':')))) WHERE mac <> '';
CREATE INDEX IF NOT EXISTS vps_ip_idx ON vps (ip) WHERE ip <> '';
";

/// Any constant will do, as long as nothing else takes it.
const MIGRATION_LOCK: i64 = 0x6761_7465_6d65_7368; // "gatemesh"

pub const BY_MAC: &str = "SELECT vps_id, organization_id, mac, ip FROM vps \
     WHERE lower(replace(mac, '-', ':')) = $1 AND mac <> '' LIMIT 1";
pub const BY_IP: &str =
    "SELECT vps_id, organization_id, mac, ip FROM vps WHERE ip = $1 AND ip <> '' LIMIT 1";

/// How long a lookup waits for a pooled connection, or for a new one.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresInventory {
    pool: Pool,
    target: String,
}

impl std::fmt::Debug for PostgresInventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresInventory")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl PostgresInventory {
    /// Connects to `url` (`postgres://user:password@host:port/db` or the
    /// `key=value` form), runs the migration, and fails with
    /// [`InventoryError::Unreachable`] if the database cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, InventoryError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| InventoryError::BadUrl(e.to_string()))?;
        let target = describe(&config);
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| InventoryError::BadUrl(e.to_string()))?;
        let inventory = Self { pool, target };
        inventory.migrate().await?;
        tracing::info!(database = %inventory.target, "PostgreSQL inventory ready");
        Ok(inventory)
    }

    /// Creates the schema if it is not there.
    pub async fn migrate(&self) -> Result<(), InventoryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(backend)?;
        tx.batch_execute(MIGRATION).await.map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    /// Inserts or replaces one VPS (by `vps_id`); the MAC is stored
    /// normalised.
    pub async fn upsert(&self, vps: &Vps) -> Result<(), InventoryError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "INSERT INTO vps (vps_id, organization_id, mac, ip) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (vps_id) DO UPDATE SET organization_id = EXCLUDED.organization_id, \
                 mac = EXCLUDED.mac, ip = EXCLUDED.ip",
            )
            .await
            .map_err(backend)?;
        let mac = normalize_mac(&vps.mac);
        let ip = vps.ip.trim();
        client
            .execute(&statement, &[&vps.vps_id, &vps.organization_id, &mac, &ip])
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Removes one VPS; whether it was there.
    pub async fn remove(&self, vps_id: &str) -> Result<bool, InventoryError> {
        let client = self.client().await?;
        let removed = client
            .execute("DELETE FROM vps WHERE vps_id = $1", &[&vps_id])
            .await
            .map_err(backend)?;
        Ok(removed > 0)
    }

    /// The pool, for tools and tests that need SQL of their own.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, InventoryError> {
        self.pool
            .get()
            .await
            .map_err(|e| InventoryError::Unreachable {
                target: self.target.clone(),
                message: error_chain(&e),
            })
    }
}

#[async_trait]
impl Inventory for PostgresInventory {
    async fn find_by_lease(&self, ip: &str, mac: &str) -> Result<Option<Vps>, InventoryError> {
        let client = self.client().await?;
        let mac = normalize_mac(mac);
        let ip = ip.trim();
        let lookups = [(BY_MAC, mac.as_str()), (BY_IP, ip)];
        for (sql, key) in lookups {
            if key.is_empty() {
                continue;
            }
            let statement = client.prepare_cached(sql).await.map_err(backend)?;
            if let Some(row) = client
                .query_opt(&statement, &[&key])
                .await
                .map_err(backend)?
            {
                return Ok(Some(Vps {
                    vps_id: row.get(0),
                    organization_id: row.get(1),
                    mac: row.get(2),
                    ip: row.get(3),
                }));
            }
        }
        Ok(None)
    }
}

fn backend(e: tokio_postgres::Error) -> InventoryError {
    InventoryError::Backend(error_chain(&e))
}

/// An error and its sources on one line; tokio-postgres keeps the useful
/// part (refused, bad password, missing database) in the source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !message.contains(&next) {
            message.push_str(": ");
            message.push_str(&next);
        }
        source = s.source();
    }
    message
}

/// `user@host:port/db`, never the password.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_url_or_an_unreachable_server_is_a_clear_error() {
        let e = PostgresInventory::connect("mysql://nope", 1)
            .await
            .unwrap_err();
        assert!(matches!(e, InventoryError::BadUrl(_)), "{e}");
        // Bind a port, then free it: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://gm:secret-pw@127.0.0.1:{port}/inv");
        let e = PostgresInventory::connect(&url, 1).await.unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, InventoryError::Unreachable { .. }), "{text}");
        assert!(text.contains(&format!("gm@127.0.0.1:{port}/inv")), "{text}");
        assert!(!text.contains("secret-pw"), "{text}");
    }
}
