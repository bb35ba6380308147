// An instance's call API only sends methods that the gateway serves.
use std::time::Duration;

use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb;
use gatemesh_service::InstanceHandle;

async fn ask(instance: &InstanceHandle) {
    let _ = instance
        .call::<FindVpsByLease>(pb::FindVpsByLeaseRequest::default(), Duration::from_secs(1))
        .await;
}

fn main() {}
