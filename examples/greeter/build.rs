//! The messages, a client, and the method bindings of `greeter.proto`, as
//! any crate with its own mesh methods generates them (no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gatemesh_build::configure()
        .include("proto")
        .compile(&["greeter/v1/greeter.proto"])
}
