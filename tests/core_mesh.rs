//! The core mesh (issue 2): registration, first valid, failures that end
//! at once, authentication, reconnects, late answers, many calls on one stream.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use gatemesh_gateway::CallError;
use gatemesh_handlers::HandlerError;
use gatemesh_proto::SECRET_METADATA_KEY;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{self, FindVpsByLeaseResponse};
use tokio::sync::Notify;
use tonic::Code;

#[tokio::test]
async fn valid_answer_wins_over_faster_not_found_answers() {
    let gw = TestGateway::start().await;
    let _beta = start_instance(&gw, "beta-1", "beta", knows("aa:00", "vps-other"));
    let _dev = start_instance(&gw, "dev-1", "dev", knows("aa:01", "vps-dev"));
    // prod knows the lease but answers last: only once the gateway holds
    // both "not mine" answers.
    let release = Arc::new(Notify::new());
    let _prod = {
        let release = release.clone();
        start_instance(
            &gw,
            "prod-1",
            "prod",
            move |_ctx, req: pb::FindVpsByLeaseRequest| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok(if req.mac == "52:54:00:12:34:56" {
                        FindVpsByLeaseResponse {
                            vps_id: "vps-42".into(),
                            organization_id: "org-7".into(),
                        }
                    } else {
                        Default::default()
                    })
                }
            },
        )
    };
    gw.wait_instances(3).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.5", "52:54:00:12:34:56"))
            .first_valid()
            .await
    });
    let instances = gw.gateway.instances().clone();
    eventually("beta and dev answered not mine, prod still working", || {
        instances.pending_calls() == 1 && instances.get("prod-1").unwrap().in_flight() == 1
    })
    .await;
    release.notify_one();
    let answer = call.await.unwrap().unwrap();
    assert_eq!(answer.value.vps_id, "vps-42");
    assert_eq!(answer.value.organization_id, "org-7");
    assert_eq!(&*answer.instance, "prod-1");
    assert_eq!(&*answer.environment, "prod");
}

#[tokio::test]
async fn all_not_found_returns_not_found_without_waiting_for_the_deadline() {
    let gw = TestGateway::start().await;
    let _a = start_instance(&gw, "a", "beta", knows("x", "vps-x"));
    let _b = start_instance(&gw, "b", "prod", knows("y", "vps-y"));
    gw.wait_instances(2).await;
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.9.9.9", "nobody"))
        // Were the call to wait out its deadline, this test would fail
        // with DeadlineExceeded (after an hour), not NotFound.
        .timeout(Duration::from_secs(3600))
        .first_valid()
        .await
        .unwrap_err();
    assert_eq!(err, CallError::NotFound { asked: 2 });
    assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn errors_from_some_instances_do_not_fail_the_call() {
    let gw = TestGateway::start().await;
    let _broken = start_instance(&gw, "broken", "beta", |_ctx, _req| async {
        Err::<FindVpsByLeaseResponse, _>(HandlerError::unavailable("database down"))
    });
    // good answers only once the gateway holds broken's error.
    let release = Arc::new(Notify::new());
    let _good = {
        let release = release.clone();
        start_instance(&gw, "good", "prod", move |_ctx, _req| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(FindVpsByLeaseResponse {
                    vps_id: "vps-1".into(),
                    organization_id: "o".into(),
                })
            }
        })
    };
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .first_valid()
            .await
    });
    let instances = gw.gateway.instances().clone();
    eventually("broken answered its error, good still working", || {
        instances.pending_calls() == 1 && instances.get("good").unwrap().in_flight() == 1
    })
    .await;
    release.notify_one();
    let answer = call.await.unwrap().unwrap();
    assert_eq!(&*answer.instance, "good");
}

#[tokio::test]
async fn no_responders_fails_at_once() {
    let gw = TestGateway::start().await;
    let err = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .timeout(Duration::from_secs(3600))
        .first_valid()
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NoResponders { .. }), "{err:?}");
    assert_eq!(err.code(), Code::Unavailable);
}

/// A raw client that opens RegisterGateway with the given secret.
async fn raw_register(
    gw: &TestGateway,
    secret: Option<&str>,
) -> Result<tonic::Streaming<pb::GatewayMessage>, tonic::Status> {
    let mut client = pb::gateway_client::GatewayClient::connect(gw.url())
        .await
        .unwrap();
    let hello = pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Hello(pb::Hello {
            instance_id: "raw".into(),
            environment: "dev".into(),
            version: "0".into(),
            methods: vec!["FindVPSByLease".into()],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    };
    let mut request =
        tonic::Request::new(tokio_stream::iter([hello]).chain(tokio_stream::pending()));
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert(SECRET_METADATA_KEY, secret.parse().unwrap());
    }
    client
        .register_gateway(request)
        .await
        .map(|r| r.into_inner())
}

use tokio_stream::StreamExt as _;

#[tokio::test]
async fn wrong_or_missing_secret_is_refused_before_registration() {
    let gw = TestGateway::start().await;
    let missing = raw_register(&gw, None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let wrong = raw_register(&gw, Some("not-the-secret")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    assert_eq!(gw.gateway.instances().len(), 0);

    // A real instance with the wrong secret keeps failing, never registers,
    // and says why.
    let mut options = options("intruder", "dev");
    options.secret = gatemesh_runtime::Secret::new("wrong");
    let mut registry = gatemesh_handlers::Registry::new();
    registry.method::<FindVpsByLease>(knows("a", "b")).unwrap();
    let intruder = gatemesh_service::Instance::new(options, registry).start([gw.url()]);
    let mut status = intruder.links()[0].watch();
    let _ = status
        .wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("UNAUTHENTICATED"))
        })
        .await;
    assert_eq!(gw.gateway.instances().len(), 0);
    assert!(gatemesh_gateway::stats::Stats::get(&gw.gateway.stats().refused_streams) >= 3);

    // The right secret is accepted.
    let _ok = raw_register(&gw, Some(SECRET)).await.unwrap();
    gw.wait_instances(1).await;
}

#[tokio::test]
async fn an_instance_killed_mid_call_does_not_hang_the_call() {
    let gw = TestGateway::start().await;
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let hangs = {
        let started = started.clone();
        move |_ctx, _req| {
            let started = started.clone();
            async move {
                started.notify_one();
                std::future::pending::<()>().await;
                Ok(FindVpsByLeaseResponse::default())
            }
        }
    };
    let doomed = start_instance(&gw, "doomed", "beta", hangs.clone());
    let survivor = {
        let release = release.clone();
        start_instance(&gw, "survivor", "prod", move |_ctx, _req| {
            let release = release.clone();
            async move {
                release.notified().await;
                Ok(FindVpsByLeaseResponse {
                    vps_id: "vps-9".into(),
                    organization_id: "o".into(),
                })
            }
        })
    };
    gw.wait_instances(2).await;
    let mesh = gw.gateway.mesh();
    let call = tokio::spawn({
        let mesh = mesh.clone();
        async move {
            mesh.call::<FindVpsByLease>(lease("10.0.0.9", "m"))
                .timeout(Duration::from_secs(3600))
                .first_valid()
                .await
        }
    });
    started.notified().await;
    doomed.kill();
    gw.wait_instances(1).await;
    release.notify_one();
    let answer = call.await.unwrap().unwrap();
    assert_eq!(&*answer.instance, "survivor");
    drop(survivor);

    // Alone, a killed instance fails the call at once instead of hanging it.
    gw.wait_instances(0).await;
    let lonely = start_instance(&gw, "lonely", "dev", hangs);
    gw.wait_instances(1).await;
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.9", "m"))
            .timeout(Duration::from_secs(3600))
            .first_valid()
            .await
    });
    started.notified().await;
    lonely.kill();
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::Disconnected(_)), "{err:?}");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn an_instance_reconnects_after_the_gateway_restarts() {
    init_logs();
    let gw = TestGateway::start().await;
    let addr = gw.addr;
    let instance = start_instance(&gw, "phoenix", "prod", knows("m", "vps-1"));
    instance.wait_connects(1).await;
    gw.stop().await;
    let gw = TestGateway::start_at(addr, config()).await;
    instance.wait_connects(2).await;
    gw.wait_instances(1).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(&*answer.instance, "phoenix");
}

/// A scripted instance on a raw stream: it answers only when told to, and
/// can send answers for ids it was never sent.
#[tokio::test]
async fn late_and_unknown_answers_are_dropped_without_leaks() {
    let gw = TestGateway::start().await;
    let (out_tx, out_rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Hello(pb::Hello {
            instance_id: "laggard".into(),
            environment: "dev".into(),
            version: "0".into(),
            methods: vec!["FindVPSByLease".into()],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    };
    out_tx.send(hello).await.unwrap();
    let mut client = pb::gateway_client::GatewayClient::connect(gw.url())
        .await
        .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    request
        .metadata_mut()
        .insert(SECRET_METADATA_KEY, SECRET.parse().unwrap());
    let mut inbound = client.register_gateway(request).await.unwrap().into_inner();
    gw.wait_instances(1).await;

    let mesh = gw.gateway.mesh();
    let call = tokio::spawn(async move {
        mesh.call::<FindVpsByLease>(lease("10.0.0.1", "m"))
            .timeout(Duration::from_millis(200))
            .first_valid()
            .await
    });
    let request_id = loop {
        match inbound.message().await.unwrap().unwrap().kind {
            Some(pb::gateway_message::Kind::Request(r)) => break r.id,
            _ => continue,
        }
    };
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, CallError::DeadlineExceeded(_)), "{err:?}");
    // The gateway tells the instance the call is over.
    loop {
        match inbound.message().await.unwrap().unwrap().kind {
            Some(pb::gateway_message::Kind::Cancel(c)) => {
                assert_eq!(c.id, request_id);
                break;
            }
            _ => continue,
        }
    }
    let answer = |id| pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Response(pb::Response {
            id,
            result: Some(pb::response::Result::Payload(
                prost::Message::encode_to_vec(&FindVpsByLeaseResponse {
                    vps_id: "too-late".into(),
                    organization_id: "o".into(),
                })
                .into(),
            )),
        })),
    };
    out_tx.send(answer(request_id)).await.unwrap();
    out_tx.send(answer(request_id + 1000)).await.unwrap();
    let stats = gw.gateway.stats().clone();
    eventually("late answer counted", || {
        gatemesh_gateway::stats::Stats::get(&stats.late_responses) == 1
    })
    .await;
    eventually("unknown answer counted", || {
        gatemesh_gateway::stats::Stats::get(&stats.violations) == 1
    })
    .await;
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
    assert_eq!(
        gw.gateway.instances().len(),
        1,
        "one bad frame does not disconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_over_one_stream_get_their_own_answers() {
    const CALLS: usize = 1500;
    let mut config = config();
    config.queue_capacity = 4096;
    let gw = TestGateway::start_with(config).await;
    let served = Arc::new(AtomicUsize::new(0));
    let mut options = options("echo", "prod");
    options.max_concurrency = 4096;
    options.dispatch.max_in_flight_per_stream = 4096;
    let mut registry = gatemesh_handlers::Registry::new();
    let counter = served.clone();
    registry
        .method::<FindVpsByLease>(move |_ctx, req: pb::FindVpsByLeaseRequest| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                // Answer out of order.
                tokio::time::sleep(Duration::from_micros((req.ip.len() as u64 * 7919) % 3000))
                    .await;
                Ok(FindVpsByLeaseResponse {
                    vps_id: format!("vps-for-{}", req.ip),
                    organization_id: req.mac,
                })
            }
        })
        .unwrap();
    let _echo = gatemesh_service::Instance::new(options, registry).start([gw.url()]);
    gw.wait_instances(1).await;
    let mesh = gw.gateway.mesh();
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let mesh = mesh.clone();
            tokio::spawn(async move {
                let ip = format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256);
                let answer = mesh
                    .call::<FindVpsByLease>(lease(&ip, &i.to_string()))
                    .timeout(Duration::from_secs(60))
                    .first_valid()
                    .await
                    .unwrap();
                assert_eq!(answer.value.vps_id, format!("vps-for-{ip}"));
                assert_eq!(answer.value.organization_id, i.to_string());
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(served.load(Ordering::Relaxed), CALLS);
    assert_eq!(gw.gateway.instances().pending_calls(), 0);
}

#[tokio::test]
async fn an_instance_started_before_its_gateway_registers_once_it_is_up() {
    let port = common::process::free_port();
    let addr = common::process::loopback(port);
    let mut registry = gatemesh_handlers::Registry::new();
    registry
        .method::<FindVpsByLease>(knows("m", "vps-early"))
        .unwrap();
    let early = gatemesh_service::Instance::new(options("early", "dev"), registry)
        .start([format!("http://{addr}")]);
    // The link keeps failing (nothing listens) and says why.
    let _ = early.links()[0]
        .watch()
        .wait_for(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("cannot connect"))
        })
        .await;
    let gw = TestGateway::start_at(addr, config()).await;
    early.wait_connected().await;
    gw.wait_instances(1).await;
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("1", "m"))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vps-early");
}
