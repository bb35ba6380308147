//! The greeter's own method, end to end through a real gateway on a real
//! socket: the gateway is given the crate's `SET`; two instances serve
//! `Greet` from the crate's registry; the gateway calls it typed
//! (first_valid by its `valid_if_nonempty` option), a generated tonic
//! client calls it as plain gRPC, and reflection lists its service.

use std::time::Duration;

use gatemesh_example_greeter::methods::{self, Greet};
use gatemesh_example_greeter::pb::GreetRequest;
use gatemesh_example_greeter::pb::greeter_client::GreeterClient;
use gatemesh_gateway::{Gateway, GatewayConfig};
use gatemesh_runtime::Secret;
use gatemesh_service::{Instance, InstanceOptions};
use tokio::net::TcpListener;

const SECRET: &str = "greeter-secret";

fn options(id: &str) -> InstanceOptions {
    let mut options = InstanceOptions::new(id, "prod", Secret::new(SECRET));
    options.reconnect_base = Duration::from_millis(20);
    options
}

fn request(name: &str) -> tonic::Request<GreetRequest> {
    let mut request = tonic::Request::new(GreetRequest { name: name.into() });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {SECRET}").parse().unwrap());
    request
}

#[tokio::test]
async fn a_method_from_the_crates_own_proto_is_served_and_answers_through_a_gateway() {
    let gateway = Gateway::builder(GatewayConfig::with_secret(SECRET))
        .methods(methods::SET)
        .unwrap()
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(gateway.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let alice = Instance::new(
        options("prod-1"),
        gatemesh_example_greeter::registry(&["alice"]).unwrap(),
    )
    .start([url.clone()]);
    let bob = Instance::new(
        options("prod-2"),
        gatemesh_example_greeter::registry(&["bob"]).unwrap(),
    )
    .start([url.clone()]);
    gateway.instances().wait_until(|i| i.len() == 2).await;

    // Typed, from the gateway: the one instance that knows bob answers.
    let answer = gateway
        .mesh()
        .call::<Greet>(GreetRequest { name: "bob".into() })
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.greeting, "hello, bob");
    assert_eq!(&*answer.instance, "prod-2");

    // Plain gRPC, from the crate's generated client.
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = GreeterClient::new(channel.clone());
    let answer = client.greet(request("alice")).await.unwrap();
    assert_eq!(
        answer.metadata().get("gatemesh-instance").unwrap(),
        "prod-1"
    );
    assert_eq!(answer.into_inner().greeting, "hello, alice");
    // Nobody knows carol: both answered "not mine".
    let err = client.greet(request("carol")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // The handler's own status comes back as the call's.
    let mut one = request("");
    one.metadata_mut()
        .insert("gatemesh-strategy", "one".parse().unwrap());
    let err = client.greet(one).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("name is empty"), "{err:?}");

    // Reflection lists the greeter's service beside gatemesh's.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "greeter.v1.Greeter".into(),
        )),
    };
    let mut reflection = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = reflection.message().await.unwrap().unwrap();
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );

    alice.shutdown().await;
    bob.shutdown().await;
    let _ = stop.send(());
    served.await.unwrap().unwrap();
}
