// An instance's registry does not take a method the gateway serves.
use gatemesh_handlers::InstanceRegistry;
use gatemesh_proto::methods::GetLeases;

fn main() {
    let mut registry = InstanceRegistry::new();
    let _ = registry.method::<GetLeases>(|_ctx, _req| async { Ok(Default::default()) });
}
