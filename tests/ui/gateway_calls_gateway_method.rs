// The gateway's typed call API only sends methods that instances serve.
use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_proto::methods::GetLeases;
use gatemesh_proto::pb;

fn main() {
    let gateway = Gateway::new(GatewayConfig::with_secret("s"));
    let _ = gateway.mesh().call::<GetLeases>(pb::GetLeasesRequest::default());
}
