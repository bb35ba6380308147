//! How a developer adds a mesh method, end to end: `Ping`, added exactly
//! this way (see README "Adding a method").
//!
//! 1. The proto, in `proto/proto/gatemesh/v1/methods.proto`: an rpc in
//!    `InstanceMethods` (served by instances) or `GatewayMethods` (served by
//!    the gateway), and its messages. Options on the rpc say what a valid
//!    answer is and whether it may be sent again. The build generates the
//!    binding `gatemesh_proto::methods::Ping` from these lines:
//!    ```proto
//!    rpc Ping(PingRequest) returns (PingResponse) {
//!      option (gatemesh.v1.idempotent) = true;
//!    }
//!    message PingRequest { string text = 1; }
//!    message PingResponse { string text = 1; }
//!    ```
//! 2. A handler: the `async fn` below.
//! 3. One registration line where the registry is built.
//! 4. A typed call from the gateway, and from the CLI:
//!    `gatemesh call Ping --json '{"text":"hello"}'`.
//!
//! Run: `cargo run --example add_method` (add `serve` to keep it running
//! and try the CLI line it prints).

use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::{Context, Registry, Status};
use gatemesh_proto::methods::Ping;
use gatemesh_proto::pb::{PingRequest, PingResponse};
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;

// Step 2: the handler, written against the method's own types.
pub async fn ping(_ctx: Context, request: PingRequest) -> Result<PingResponse, Status> {
    Ok(PingResponse { text: request.text })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = Gateway::new(GatewayConfig::with_secret("add-method-example"));
    let server = tokio::spawn(gateway.clone().serve(listener, std::future::pending()));

    let mut registry = Registry::new();
    // Step 3: one registration line.
    registry.method::<Ping>(ping)?;
    let options = InstanceOptions::new("prod-1", "prod", Secret::new("add-method-example"));
    let instance = Instance::new(options, registry).start([url.clone()]);
    instance.wait_connected().await;
    gateway.instances().wait_until(|i| !i.is_empty()).await;

    // Step 4: a typed call. The wrong request type, or a method the
    // instances do not serve (e.g. `GetLeases`), does not compile.
    let answer = gateway
        .mesh()
        .call::<Ping>(PingRequest {
            text: "hello".into(),
        })
        .first_valid()
        .await?;
    println!("{} answered {:?}", answer.instance, answer.value.text);

    println!(
        "from the CLI: GATEMESH_GATEWAY={url} GATEWAY_API_SECRET=add-method-example \
         gatemesh call Ping --json '{{\"text\":\"hello\"}}'"
    );
    if std::env::args().nth(1).as_deref() == Some("serve") {
        println!("serving until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    instance.shutdown().await;
    server.abort();
    Ok(())
}
