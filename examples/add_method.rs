//! How a developer adds a mesh method, end to end, in one file.
//!
//! In the real tree the steps are:
//! 1. messages and an rpc in `proto/proto/gatemesh/v1/methods.proto`:
//!    ```proto
//!    service InstanceMethods {
//!      rpc GetVpsStatus(GetVpsStatusRequest) returns (GetVpsStatusResponse);
//!    }
//!    message GetVpsStatusRequest { string vps_id = 1; }
//!    message GetVpsStatusResponse { string vps_id = 1; string state = 2; }
//!    ```
//! 2. one `method!` line in `proto/src/methods.rs` binding the name to its
//!    types (and, optionally, what counts as a valid answer);
//! 3. a handler in `service/src/handlers/`, one file;
//! 4. one registration line where the instance builds its registry;
//! 5. a typed call on the gateway.
//!
//! This example does the same without touching the tree: the messages are
//! written with prost's derive (what step 1 generates), so it runs as is.
//!
//! Run: `cargo run --example add_method`

use std::time::Duration;

use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_handlers::{Context, HandlerError, Registry};
use gatemesh_proto::Method;
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;

// Step 1: the messages (generated from the .proto above in the real tree).
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetVpsStatusRequest {
    #[prost(string, tag = "1")]
    pub vps_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetVpsStatusResponse {
    #[prost(string, tag = "1")]
    pub vps_id: String,
    #[prost(string, tag = "2")]
    pub state: String,
}

// Step 2: bind the name to its types, once.
pub struct GetVpsStatus;

impl Method for GetVpsStatus {
    const NAME: &'static str = "GetVpsStatus";
    type Request = GetVpsStatusRequest;
    type Response = GetVpsStatusResponse;

    /// An empty state means "not my VPS": first_valid keeps waiting.
    fn is_valid(response: &GetVpsStatusResponse) -> bool {
        !response.state.is_empty()
    }
}

// Step 3: the handler, written against the method's own types.
async fn get_vps_status(
    _ctx: Context,
    request: GetVpsStatusRequest,
) -> Result<GetVpsStatusResponse, HandlerError> {
    if request.vps_id.is_empty() {
        return Err(HandlerError::invalid_argument("vps_id is required"));
    }
    let state = if request.vps_id == "vps-42" {
        "running"
    } else {
        ""
    };
    Ok(GetVpsStatusResponse {
        vps_id: request.vps_id,
        state: state.into(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let gateway = Gateway::new(GatewayConfig::with_secret("example"));
    let server = tokio::spawn(gateway.clone().serve(listener, std::future::pending()));

    // Step 4: one registration line.
    let mut registry = Registry::new();
    registry.method::<GetVpsStatus>(get_vps_status)?;
    let instance = Instance::new(
        InstanceOptions::new("prod-1", "prod", Secret::new("example")),
        registry,
    )
    .start([url]);
    instance.wait_connected().await;
    gateway.instances().wait_until(|i| !i.is_empty()).await;

    // Step 5: a typed call. Sending the wrong request type does not compile.
    let answer = gateway
        .mesh()
        .call::<GetVpsStatus>(GetVpsStatusRequest {
            vps_id: "vps-42".into(),
        })
        .timeout(Duration::from_secs(2))
        .first_valid()
        .await?;
    println!(
        "{} is {} (answered by {} in {:?})",
        answer.value.vps_id, answer.value.state, answer.instance, answer.latency
    );

    let unknown = gateway
        .mesh()
        .call::<GetVpsStatus>(GetVpsStatusRequest {
            vps_id: "vps-7".into(),
        })
        .first_valid()
        .await;
    println!(
        "vps-7: {}",
        unknown
            .map(|a| a.value.state)
            .unwrap_or_else(|e| e.to_string())
    );

    instance.shutdown().await;
    server.abort();
    Ok(())
}
