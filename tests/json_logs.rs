//! What an operator's `jq` reads (issue #26): the real `vps-gateway` and
//! `vps-service` with JSON logs, through a session that fails on purpose.
//! Every line is one JSON object, every key once, no value Rust `Debug`
//! text (`Some(..)`, `None`, a list in a string); a traced call's lines
//! carry its `trace_id` as a top-level key; both daemons spell gRPC codes
//! the canonical way (`UNAUTHENTICATED`); a flood of failing calls and of
//! refused streams logs a bounded number of lines, one of them with the
//! count it left out.

mod common;

use std::path::Path;
use std::time::Duration;

use common::process::{Proc, binary, free_port, gateway_env};
use gatemesh_proto::pb;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;

const SECRET: &str = "json-logs-secret";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// Failing calls in the flood: far more than the rate limit lets through.
const FLOOD: usize = 300;

type Admin = pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

/// A line's keys in order, duplicates kept (a map would merge them).
struct Keys(Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor;
        impl<'de> Visitor<'de> for KeysVisitor {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(Keys(keys))
            }
        }
        deserializer.deserialize_map(KeysVisitor)
    }
}

/// Every line of `log`, parsed; panics on a line that is not one JSON
/// object with unique keys and no `Debug` text in its values.
fn lines(log: &Path) -> Vec<serde_json::Map<String, Value>> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .map(|line| {
            let Keys(keys) = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON object ({e}): {line}", log.display()));
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), keys.len(), "a key written twice: {line}");
            let Ok(Value::Object(object)) = serde_json::from_str(line) else {
                unreachable!()
            };
            for (key, value) in &object {
                no_debug_text(key, value, line);
            }
            object
        })
        .collect()
}

fn no_debug_text(key: &str, value: &Value, line: &str) {
    match value {
        Value::String(s) => {
            let debug = ["Some(", "None", "Ok(", "Err(", "[", "{"]
                .iter()
                .any(|p| s.starts_with(p));
            assert!(!debug, "{key} holds Rust Debug text: {line}");
            assert!(
                !s.contains("Unauthenticated") && !s.contains("PermissionDenied"),
                "{key}: a code spelled the Debug way: {line}"
            );
        }
        Value::Array(items) => items.iter().for_each(|v| no_debug_text(key, v, line)),
        _ => {}
    }
}

fn messages<'a>(
    lines: &'a [serde_json::Map<String, Value>],
    message: &str,
) -> Vec<&'a serde_json::Map<String, Value>> {
    lines
        .iter()
        .filter(|l| l.get("message").and_then(Value::as_str) == Some(message))
        .collect()
}

/// The lines whose message starts with `prefix` (a message that explains
/// itself after its first words).
fn messages_starting<'a>(
    lines: &'a [serde_json::Map<String, Value>],
    prefix: &str,
) -> Vec<&'a serde_json::Map<String, Value>> {
    lines
        .iter()
        .filter(|l| {
            l.get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

/// An admin call to an instance that is not connected: `UNAVAILABLE`, a
/// `call failed` WARN.
async fn failing_call(admin: &mut Admin, traceparent: Option<&str>) {
    let mut request = tonic::Request::new(pb::CallRequest {
        method: "FindVPSByLease".into(),
        instance_id: "ghost".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
    if let Some(traceparent) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
    }
    let status = admin.call(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_typed_traced_spelled_once_and_bounded_in_a_flood() {
    let dir = std::env::temp_dir().join(format!("gatemesh-json-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (gateway_log, instance_log, intruder_log) = (
        dir.join("gateway.log"),
        dir.join("instance.log"),
        dir.join("intruder.log"),
    );
    let port = free_port();
    let mut env = gateway_env(port, SECRET);
    env.push(("GATEWAY_LOG_FORMAT", "json".into()));
    env.push(("RUST_LOG", "info".into()));
    let mut gateway = Proc::spawn_logged("vps-gateway", &binary("vps-gateway"), &env, &gateway_log);
    let url = format!("http://127.0.0.1:{port}");
    let service_env = |id: &str, secret: &str| {
        vec![
            ("VPS_GATEWAY_URL", url.clone()),
            ("VPS_GATEWAY_API_SECRET", secret.to_string()),
            ("VPS_INSTANCE_ID", id.to_string()),
            ("VPS_ENVIRONMENT", "prod".to_string()),
            ("VPS_RECONNECT_BASE_MS", "20".into()),
            ("VPS_RECONNECT_MAX_MS", "200".into()),
            ("VPS_LOG_FORMAT", "json".into()),
            ("RUST_LOG", "info".into()),
        ]
    };
    let mut instance = Proc::spawn_logged(
        "prod-1",
        &binary("vps-service"),
        &service_env("prod-1", SECRET),
        &instance_log,
    );
    // Dials with the wrong secret, again and again.
    let mut intruder = Proc::spawn_logged(
        "intruder",
        &binary("vps-service"),
        &service_env("intruder", "not-the-secret-at-all"),
        &intruder_log,
    );

    let mut admin = loop {
        if let Ok(mut admin) = Admin::connect(url.clone()).await {
            let mut request = tonic::Request::new(pb::ListInstancesRequest {});
            request
                .metadata_mut()
                .insert(gatemesh_proto::SECRET_METADATA_KEY, SECRET.parse().unwrap());
            if admin
                .list_instances(request)
                .await
                .is_ok_and(|r| r.into_inner().instances.len() == 1)
            {
                break admin;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // A traced call that fails, then a flood of failing calls.
    failing_call(
        &mut admin,
        Some(&format!("00-{TRACE_ID}-00f067aa0ba902b7-01")),
    )
    .await;
    for _ in 0..FLOOD {
        failing_call(&mut admin, None).await;
    }
    // A flood of streams with the wrong secret.
    let mut refused = 0;
    for _ in 0..FLOOD {
        let mut client = pb::gateway_client::GatewayClient::connect(url.clone())
            .await
            .unwrap();
        let mut request = tonic::Request::new(tokio_stream::empty::<pb::InstanceMessage>());
        request.metadata_mut().insert(
            gatemesh_proto::SECRET_METADATA_KEY,
            "wrong".parse().unwrap(),
        );
        if client.register_gateway(request).await.is_err() {
            refused += 1;
        }
    }
    assert_eq!(refused, FLOOD);
    // Once the limit's period has passed, the next failure's line says how
    // many were left out.
    let suppressed = |line: &&serde_json::Map<String, Value>| {
        line.get("suppressed").and_then(Value::as_u64).unwrap_or(0) > 0
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        failing_call(&mut admin, None).await;
        if messages(&lines(&gateway_log), "call failed")
            .iter()
            .any(suppressed)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line with a suppressed count"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for("the intruder's refusal in its log", || {
        std::fs::read_to_string(&intruder_log).is_ok_and(|l| l.contains("UNAUTHENTICATED"))
    })
    .await;

    for proc in [&gateway, &instance, &intruder] {
        proc.signal("TERM");
    }
    for proc in [&mut gateway, &mut instance, &mut intruder] {
        let _ = proc.wait();
    }

    let gateway_lines = lines(&gateway_log);
    let failed = messages(&gateway_lines, "call failed");
    let bound = 2 * gatemesh_runtime::logging::BURST as usize;
    assert!(
        failed.len() <= bound,
        "{} call failed lines for {FLOOD} failures",
        failed.len()
    );
    let with_count = failed.iter().copied().find(suppressed).unwrap();
    assert_eq!(with_count["code"], "UNAVAILABLE");
    let traced = failed[0];
    assert_eq!(traced["trace_id"], TRACE_ID, "{traced:?}");
    assert_eq!(traced["method"], "FindVPSByLease");
    assert_eq!(traced["span"], "gatemesh.admin");
    // Refusals of credentials: at most a line a minute per address (all of
    // the flood comes from 127.0.0.1), typed like the rest.
    let refusals = messages_starting(&gateway_lines, "refused at the boundary");
    assert!(
        !refusals.is_empty() && refusals.len() <= bound,
        "{} refused-at-the-boundary lines for {FLOOD} refusals",
        refusals.len()
    );
    assert_eq!(refusals[0]["port"], "grpc", "{:?}", refusals[0]);
    assert_eq!(refusals[0]["reason"], "secret", "{:?}", refusals[0]);
    assert!(refusals[0]["suppressed"].is_u64(), "{:?}", refusals[0]);
    let registered = messages(&gateway_lines, "instance registered");
    assert_eq!(
        registered[0]["methods"],
        serde_json::json!(["FindVPSByLease", "Ping"])
    );
    let limits = messages(&gateway_lines, "gRPC connections must authenticate in time");
    if let Some(fd_limit) = limits[0].get("fd_limit") {
        assert!(fd_limit.is_u64(), "{:?}", limits[0]);
    }
    let instance_lines = lines(&instance_log);
    let starting = messages(&instance_lines, "starting instance");
    assert_eq!(starting[0]["gateways"], serde_json::json!([url]));
    let intruder_lines = lines(&intruder_log);
    // Refused for its credentials: an ERROR with the code as gRPC spells
    // it, typed fields, and the retry at the maximum.
    let refused = messages_starting(
        &intruder_lines,
        "the gateway refused this instance's credentials",
    );
    assert!(!refused.is_empty(), "{intruder_lines:?}");
    assert_eq!(refused[0]["code"], "UNAUTHENTICATED", "{:?}", refused[0]);
    assert_eq!(refused[0]["level"], "ERROR", "{:?}", refused[0]);
    assert!(refused[0]["retry_in_ms"].is_u64());
    let _ = std::fs::remove_dir_all(&dir);
}
