// The gateway's registry does not take a method instances serve.
use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;

fn main() {
    let mut registry = Registry::new();
    let _ = registry.method::<FindVpsByLease>(|_ctx, _req| async { Ok(Default::default()) });
    let _ = Gateway::with_handlers(GatewayConfig::with_secret("s"), registry);
}
