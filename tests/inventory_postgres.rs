//! The PostgreSQL inventory against a real server (issue 7). The server's
//! URL comes from GATEMESH_TEST_DATABASE_URL (`.ci/start-services` starts
//! one and writes it); without it these tests say so and skip, or fail
//! under `GATEMESH_REQUIRE_E2E=1`.

mod common;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_service::Instance;
use gatemesh_service::handlers::FindVpsByLeaseHandler;
use gatemesh_service::inventory::postgres::{BY_IP, BY_MAC};
use gatemesh_service::inventory::{Inventory, InventoryError, PostgresInventory, Vps};

fn database_url() -> Option<String> {
    e2e::require(&[e2e::Need::Postgres])
        .then(|| std::env::var("GATEMESH_TEST_DATABASE_URL").unwrap())
}

/// Ids unique to this run, so tests sharing the table do not collide.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos:x}", std::process::id())
}

/// A MAC and an IP unique to this run.
fn lease_of(n: u32) -> (String, String) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ (std::process::id() << 12)
        ^ n.wrapping_mul(0x9e37_79b9);
    let b = seed.to_be_bytes();
    (
        format!("52:54:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
        format!("10.{}.{}.{}", b[1], b[2], b[3] | 1),
    )
}

fn vps(id: &str, mac: &str, ip: &str) -> Vps {
    Vps {
        vps_id: id.into(),
        organization_id: "org-pg".into(),
        mac: mac.into(),
        ip: ip.into(),
    }
}

#[tokio::test]
async fn looks_up_by_mac_then_by_ip_after_an_idempotent_migration() {
    let Some(url) = database_url() else { return };
    let inventory = PostgresInventory::connect(&url, 4).await.unwrap();
    // A second start migrates again: nothing breaks, nothing is lost.
    inventory.migrate().await.unwrap();
    let again = PostgresInventory::connect(&url, 2).await.unwrap();

    let (mac_a, ip_a) = lease_of(1);
    let (_, ip_b) = lease_of(2);
    let (_, ip_c) = lease_of(4);
    let a = unique("vps-pg-a");
    let b = unique("vps-pg-b");
    inventory
        .upsert(&vps(&a, &mac_a.to_uppercase(), &ip_a))
        .await
        .unwrap();
    inventory.upsert(&vps(&b, "", &ip_b)).await.unwrap();

    // By MAC, whatever its case or separators.
    let found = again
        .find_by_lease("", &mac_a.replace(':', "-").to_uppercase())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.vps_id, a);
    assert_eq!(found.organization_id, "org-pg");
    assert_eq!(found.mac, mac_a, "stored normalised");
    // By IP when the MAC is unknown.
    let found = again
        .find_by_lease(&ip_b, "02:00:00:00:00:01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.vps_id, b);
    // The MAC wins over the IP.
    let found = again.find_by_lease(&ip_b, &mac_a).await.unwrap().unwrap();
    assert_eq!(found.vps_id, a);
    // Unknown, and empty keys that must not match rows with empty columns.
    assert!(
        again
            .find_by_lease("192.0.2.1", "02:00:00:00:00:02")
            .await
            .unwrap()
            .is_none()
    );
    assert!(again.find_by_lease("", "").await.unwrap().is_none());

    // Updates replace; removal removes.
    inventory.upsert(&vps(&b, "", &ip_c)).await.unwrap();
    let found = again.find_by_lease(&ip_c, "").await.unwrap().unwrap();
    assert_eq!(found.vps_id, b);
    assert!(again.find_by_lease(&ip_b, "").await.unwrap().is_none());
    assert!(inventory.remove(&a).await.unwrap());
    assert!(inventory.remove(&b).await.unwrap());
    assert!(!inventory.remove(&b).await.unwrap());
    assert!(again.find_by_lease(&ip_b, &mac_a).await.unwrap().is_none());
}

#[tokio::test]
async fn lookups_are_index_scans() {
    let Some(url) = database_url() else { return };
    let inventory = PostgresInventory::connect(&url, 1).await.unwrap();
    let client = inventory.pool().get().await.unwrap();
    // On a small table the planner rightly prefers a sequential scan;
    // forbid it to see whether an index can serve each query at all.
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    for (sql, key, index) in [
        (BY_MAC, "52:54:00:00:00:01", "vps_mac_idx"),
        (BY_IP, "10.0.0.1", "vps_ip_idx"),
    ] {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {sql}"), &[&key])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect();
        let plan = plan.join("\n");
        assert!(plan.contains(index), "{sql}:\n{plan}");
    }
    client.batch_execute("RESET enable_seqscan").await.unwrap();
}

#[tokio::test]
async fn a_missing_database_is_a_clear_error_at_start() {
    let Some(url) = database_url() else { return };
    let (base, _) = url.rsplit_once('/').unwrap();
    let missing = format!("{base}/gatemesh_no_such_db");
    let e = PostgresInventory::connect(&missing, 1).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, InventoryError::Unreachable { .. }), "{text}");
    assert!(
        text.contains("gatemesh_no_such_db") && text.contains("does not exist"),
        "{text}"
    );
}

#[tokio::test]
async fn find_vps_by_lease_is_answered_from_postgres_through_the_mesh() {
    let Some(url) = database_url() else { return };
    let inventory = Arc::new(PostgresInventory::connect(&url, 4).await.unwrap());
    let (mac, ip) = lease_of(3);
    let id = unique("vps-pg-mesh");
    inventory.upsert(&vps(&id, &mac, &ip)).await.unwrap();

    let gw = TestGateway::start().await;
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(FindVpsByLeaseHandler::new(inventory.clone()))
        .unwrap();
    let _instance = Instance::new(options("pg-1", "prod"), registry).start([gw.url()]);
    gw.wait_instances(1).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease(&ip, &mac))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, id);
    assert_eq!(answer.value.organization_id, "org-pg");
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("192.0.2.9", "02:00:00:00:00:09"))
        .first_valid()
        .await
        .unwrap_err();
    assert!(
        matches!(err, gatemesh_gateway::CallError::NotFound { .. }),
        "{err}"
    );
    inventory.remove(&id).await.unwrap();
}
