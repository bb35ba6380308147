// Raw bytes under any name are not the registry's public `register`: the
// escape hatch is the explicit `register_raw`.
use gatemesh_handlers::{Context, Status, InstanceRegistry, RequestHandler};

struct Raw;

#[async_trait::async_trait]
impl RequestHandler for Raw {
    async fn handle(&self, _: Context, _: &str, p: bytes::Bytes) -> Result<bytes::Bytes, Status> {
        Ok(p)
    }
}

fn main() {
    let mut registry = InstanceRegistry::new();
    let _ = registry.register("FindVPSByLease", Raw);
}
