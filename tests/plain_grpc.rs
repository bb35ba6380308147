//! Every mesh method is an ordinary gRPC service on the gateway's port:
//! a generated client calls `/gatemesh.v1.InstanceMethods/FindVPSByLease`
//! with a Bearer secret, steers it with `gatemesh-*` metadata, gets the
//! mesh's status as the call's status, and reflection lists it. The
//! gateway's services also mount in a user's own tonic server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{SECRET, TestGateway, knows, lease, start_instance};
use gatemesh_handlers::{Context, Registry, Status};
use gatemesh_proto::codec::BytesCodec;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::gateway_methods_client::GatewayMethodsClient;
use gatemesh_proto::pb::instance_methods_client::InstanceMethodsClient;
use gatemesh_proto::pb::{self, FindVpsByLeaseRequest, FindVpsByLeaseResponse};
use gatemesh_service::Instance;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

const MAC: &str = "52:54:00:00:00:01";
const PATH: &str = "/gatemesh.v1.InstanceMethods/FindVPSByLease";

async fn channel(gw: &TestGateway) -> Channel {
    Channel::from_shared(gw.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A request with the secret as a bearer token and `metadata`.
fn request<T>(message: T, metadata: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    request
}

/// beta-1 holds the lease, prod-1 does not.
async fn mesh() -> (TestGateway, Vec<gatemesh_service::InstanceHandle>) {
    let gw = TestGateway::start().await;
    let instances = vec![
        start_instance(&gw, "beta-1", "beta", knows(MAC, "vps-beta")),
        start_instance(&gw, "prod-1", "prod", knows("none", "x")),
    ];
    gw.wait_instances(2).await;
    (gw, instances)
}

#[tokio::test]
async fn a_generated_client_calls_a_method_with_a_bearer_secret_and_gets_the_first_valid_answer() {
    let (gw, _instances) = mesh().await;
    let mut client = InstanceMethodsClient::new(channel(&gw).await);
    let answer = client
        .find_vps_by_lease(request(lease("10.0.0.5", MAC), &[]))
        .await
        .expect("plain gRPC call");
    let who = answer
        .metadata()
        .get("gatemesh-instance")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(who, "beta-1");
    assert_eq!(
        answer.metadata().get("gatemesh-environment").unwrap(),
        "beta"
    );
    assert_eq!(answer.into_inner().vps_id, "vps-beta");
}

#[tokio::test]
async fn metadata_routes_the_call_and_the_mesh_status_is_the_calls_status() {
    let (gw, _instances) = mesh().await;
    let mut client = InstanceMethodsClient::new(channel(&gw).await);
    // Only prod is asked, and prod does not hold it.
    let err = client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[("gatemesh-environment", "prod")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("1 instance(s) answered"), "{err:?}");
    // No instance in that environment.
    let err = client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[("gatemesh-environment", "staging")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // A named instance answers whatever it answers: "not mine" included.
    let answer = client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[("gatemesh-instance", "prod-1")],
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner(), FindVpsByLeaseResponse::default());
    // `one` asks one instance and returns its answer.
    let answer = client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[
                ("gatemesh-strategy", "one"),
                ("gatemesh-environment", "beta"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().vps_id, "vps-beta");
    let err = client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[("gatemesh-strategy", "most")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn without_the_secret_a_plain_call_is_unauthenticated() {
    let (gw, _instances) = mesh().await;
    let mut client = InstanceMethodsClient::new(channel(&gw).await);
    let err = client
        .find_vps_by_lease(tonic::Request::new(lease("10.0.0.5", MAC)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut wrong = tonic::Request::new(lease("10.0.0.5", MAC));
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let err = client.find_vps_by_lease(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // x-gatemesh-secret still works.
    let mut custom = tonic::Request::new(lease("10.0.0.5", MAC));
    custom
        .metadata_mut()
        .insert("x-gatemesh-secret", SECRET.parse().unwrap());
    assert!(client.find_vps_by_lease(custom).await.is_ok());
}

#[tokio::test]
async fn the_admin_api_and_the_stream_take_a_bearer_secret_too() {
    let gw = TestGateway::start().await;
    let mut admin = pb::gateway_admin_client::GatewayAdminClient::new(channel(&gw).await);
    let listed = admin
        .list_instances(request(pb::ListInstancesRequest {}, &[]))
        .await
        .expect("admin API with a bearer secret");
    assert!(listed.into_inner().instances.is_empty());
    // A raw instance authenticates its stream with the bearer header alone.
    let mut stream = pb::gateway_client::GatewayClient::new(channel(&gw).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Hello(pb::Hello {
            instance_id: "raw-1".into(),
            environment: "dev".into(),
            version: "raw".into(),
            methods: vec![],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    })
    .await
    .unwrap();
    let mut inbound = stream
        .register_gateway(request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &[],
        ))
        .await
        .expect("stream with a bearer secret")
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(matches!(
        first.kind,
        Some(pb::gateway_message::Kind::Welcome(_))
    ));
}

#[tokio::test]
async fn all_is_a_server_stream_of_every_instances_answer_named_in_the_headers() {
    let (gw, _instances) = mesh().await;
    let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
    grpc.ready().await.unwrap();
    let payload = Bytes::from(lease("10.0.0.5", MAC).encode_to_vec());
    let response = grpc
        .server_streaming(
            request(payload, &[("gatemesh-strategy", "all")]),
            PATH.parse().unwrap(),
            BytesCodec,
        )
        .await
        .expect("all");
    let instances = response.metadata().get("gatemesh-instances").unwrap();
    assert_eq!(instances, "beta-1,prod-1");
    assert!(response.metadata().get("gatemesh-failed").is_none());
    let mut stream = response.into_inner();
    let mut answers = Vec::new();
    while let Some(bytes) = stream.message().await.unwrap() {
        answers.push(FindVpsByLeaseResponse::decode(bytes).unwrap().vps_id);
    }
    assert_eq!(answers, ["vps-beta", ""]);
}

#[tokio::test]
async fn the_callers_grpc_timeout_is_the_calls_deadline() {
    let gw = TestGateway::start().await;
    let _slow = start_instance(&gw, "slow-1", "prod", |ctx: Context, _req| async move {
        ctx.cancelled().await;
        Err::<FindVpsByLeaseResponse, _>(Status::cancelled("stopped"))
    });
    gw.wait_instances(1).await;
    let mut client = InstanceMethodsClient::new(channel(&gw).await);
    let mut call = request(lease("10.0.0.5", MAC), &[]);
    call.set_timeout(Duration::from_millis(300));
    let err = client.find_vps_by_lease(call).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // The mesh's own status, which names the deadline it kept.
    assert!(err.message().starts_with("deadline of"), "{err:?}");
}

#[tokio::test]
async fn caller_metadata_reaches_the_handler_without_the_routing_keys_or_the_secret() {
    // The same allow-list as the admin API: the operator names what crosses.
    let mut config = common::config();
    config.forward = gatemesh_gateway::headers::ForwardHeaders::parse("x-request-id").unwrap();
    let gw = TestGateway::start_with(config).await;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = seen.clone();
    let _instance = start_instance(&gw, "prod-1", "prod", move |ctx: Context, _req| {
        let mut keys: Vec<String> = ctx.metadata().iter().map(|(k, _)| k.to_string()).collect();
        keys.sort();
        record.lock().push(keys);
        async { Ok::<_, Status>(FindVpsByLeaseResponse::default()) }
    });
    gw.wait_instances(1).await;
    let mut client = InstanceMethodsClient::new(channel(&gw).await);
    client
        .find_vps_by_lease(request(
            lease("10.0.0.5", MAC),
            &[
                ("x-request-id", "42"),
                ("gatemesh-instance", "prod-1"),
                ("gatemesh-strategy", "one"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(*seen.lock(), [vec!["x-request-id".to_string()]]);
}

#[tokio::test]
async fn the_gateways_own_methods_are_plain_grpc_too() {
    let gw = TestGateway::start().await;
    let mut client = GatewayMethodsClient::new(channel(&gw).await);
    let answer = client
        .get_gateway_info(request(pb::GetGatewayInfoRequest {}, &[]))
        .await
        .unwrap();
    assert_eq!(
        answer.metadata().get("gatemesh-instance").unwrap(),
        "gw-test"
    );
    assert_eq!(answer.into_inner().gateway_id, "gw-test");
    // Not served by this gateway (no DHCP manager): the call's status says so.
    let err = client
        .get_leases(request(pb::GetLeasesRequest::default(), &[]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
}

#[tokio::test]
async fn reflection_lists_the_method_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let gw = TestGateway::start().await;
    let mut client = ServerReflectionClient::new(channel(&gw).await);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "gatemesh.v1.Gateway",
            "gatemesh.v1.GatewayAdmin",
            "gatemesh.v1.GatewayMethods",
            "gatemesh.v1.InstanceMethods",
            "grpc.health.v1.Health",
        ]
    );
}

/// A tower layer of the user's: counts the requests it sees.
#[derive(Clone)]
struct Counting(Arc<AtomicUsize>);

impl<S> tower_layer::Layer<S> for Counting {
    type Service = CountingService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CountingService(inner, self.0.clone())
    }
}

#[derive(Clone)]
struct CountingService<S>(S, Arc<AtomicUsize>);

impl<S, B> tower_service::Service<http::Request<B>> for CountingService<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.call(request)
    }
}

#[tokio::test]
async fn the_gateway_mounts_in_a_users_own_tonic_server_with_its_layers() {
    let gateway = gatemesh_gateway::Gateway::new(common::config());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let routes = gateway.routes().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(Counting(seen.clone()))
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let url = format!("http://{addr}");
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(knows(MAC, "vps-7"))
        .unwrap();
    let instance = Instance::new(common::options("prod-1", "prod"), registry).start([url.clone()]);
    gateway.instances().wait_until(|i| i.len() == 1).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let answer = InstanceMethodsClient::new(channel)
        .find_vps_by_lease(request(
            FindVpsByLeaseRequest {
                ip: String::new(),
                mac: MAC.into(),
            },
            &[],
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().vps_id, "vps-7");
    // The instance's stream and the call both went through the user's layer.
    assert!(seen.load(Ordering::Relaxed) >= 2);
    gateway.drain().await;
    instance.shutdown().await;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
