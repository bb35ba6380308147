//! `VPS_ALLOCATE_IPS`: once connected, the instance reserves an address on
//! its gateway for each VPS of its inventory that has a MAC and no IP, as
//! the control service does for a new VPS. `AllocateIP` is idempotent per
//! VPS and MAC, so a VPS that already holds an address gets it back, and a
//! call that failed on the way (a lost stream, a deadline) is asked again.

use std::time::Duration;

use futures_util::StreamExt as _;
use gatemesh_proto::methods::AllocateIp;
use gatemesh_proto::pb;
use tonic::Code;

use crate::InstanceHandle;
use crate::inventory::Vps;

/// Calls in flight at once.
const CONCURRENCY: usize = 32;
/// Attempts per VPS when the failure was on the way, not a refusal.
const ATTEMPTS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// Newly reserved.
    pub new: usize,
    /// Already held (a restart, a retry).
    pub existing: usize,
    /// Refused by the gateway, or failed every attempt.
    pub failed: usize,
}

async fn one(instance: &InstanceHandle, vps: &Vps) -> Result<pb::AllocateIpResponse, String> {
    let request = pb::AllocateIpRequest {
        vps_id: vps.vps_id.clone(),
        organization_id: vps.organization_id.clone(),
        mac: vps.mac.clone(),
        ip: String::new(),
    };
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            instance.wait_connected().await;
        }
        match instance.call::<AllocateIp>(request.clone(), TIMEOUT).await {
            Ok(answer) => return Ok(answer),
            Err(e) if matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                last = e.to_string();
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(last)
}

/// Reserves an address for each of `list`, a few at a time, and logs each
/// outcome.
pub async fn allocate_all(instance: &InstanceHandle, list: Vec<Vps>) -> Allocated {
    instance.wait_connected().await;
    let mut results = futures_util::stream::iter(list)
        .map(|vps| async move {
            let result = one(instance, &vps).await;
            (vps, result)
        })
        .buffer_unordered(CONCURRENCY);
    let mut done = Allocated::default();
    while let Some((vps, result)) = results.next().await {
        match result {
            Ok(answer) => {
                let ip = answer.reservation.map(|r| r.ip).unwrap_or_default();
                if answer.existing {
                    done.existing += 1;
                } else {
                    done.new += 1;
                }
                tracing::debug!(vps_id = %vps.vps_id, mac = %vps.mac, %ip, existing = answer.existing, "address reserved");
            }
            Err(error) => {
                done.failed += 1;
                tracing::warn!(vps_id = %vps.vps_id, mac = %vps.mac, %error, "no address reserved");
            }
        }
    }
    tracing::info!(
        new = done.new,
        existing = done.existing,
        failed = done.failed,
        "addresses for the inventory reserved"
    );
    done
}
