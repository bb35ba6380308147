//! Mesh methods declared in a crate's own proto (`proto/greeter/v1/greeter.proto`),
//! outside gatemesh: the build (`build.rs`, gatemesh-build) generates the
//! messages ([`pb`]) and the typed bindings ([`methods`]: [`methods::Greet`]
//! and the crate's `SET`); [`greet`] is the handler and [`registry`] the
//! registration an instance serves. A gateway given [`methods::SET`] routes
//! `Greet` by its options and serves it as plain gRPC with reflection
//! (`tests/through_gateway.rs`).

#![forbid(unsafe_code)]

/// The messages and a tonic client of `greeter.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("greeter.v1");
}

/// `Greet`, bound to its messages, side and options, and this crate's `SET`.
pub mod methods {
    gatemesh_proto::include_methods!();
}

use gatemesh_handlers::{Context, InstanceRegistry, RegistryError, Status};
use pb::{GreetRequest, GreetResponse};

/// Greets the people of `known`; anyone else is "not mine" (an empty
/// greeting), and an empty name is the caller's mistake.
pub async fn greet(
    known: &[&str],
    _ctx: Context,
    request: GreetRequest,
) -> Result<GreetResponse, Status> {
    if request.name.is_empty() {
        return Err(Status::invalid_argument("name is empty"));
    }
    let greeting = if known.contains(&request.name.as_str()) {
        format!("hello, {}", request.name)
    } else {
        String::new()
    };
    Ok(GreetResponse { greeting })
}

/// An instance's registry serving `Greet` for `known`.
pub fn registry(known: &'static [&'static str]) -> Result<InstanceRegistry, RegistryError> {
    let mut registry = InstanceRegistry::new();
    registry.method::<methods::Greet>(move |ctx, request| greet(known, ctx, request))?;
    Ok(registry)
}
