//! With span export off, a call that carries a W3C trace context still
//! puts its trace id on the handler's log lines (issue #17), and a call
//! that carries none gets no span at all.

mod common;

use common::logs::Logs;
use common::*;
use gatemesh_handlers::Context;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_proto::pb::{FindVpsByLeaseRequest, FindVpsByLeaseResponse};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn a_handlers_log_lines_carry_the_callers_trace_id() {
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_env_filter("info")
        .init();
    let gw = TestGateway::start().await;
    let _instance = start_instance(
        &gw,
        "dev-1",
        "dev",
        |ctx: Context, req: FindVpsByLeaseRequest| {
            tracing::info!(mac = %req.mac, "looking the lease up");
            let vps_id = ctx
                .metadata()
                .get("traceparent")
                .unwrap_or_default()
                .to_string();
            async move {
                Ok(FindVpsByLeaseResponse {
                    vps_id,
                    organization_id: String::new(),
                })
            }
        },
    );
    gw.wait_instances(1).await;
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "traced"))
        .metadata("traceparent", traceparent.clone())
        .unwrap()
        .first_valid()
        .await
        .unwrap();
    // With export off the trace context goes on as the caller sent it.
    assert_eq!(answer.value.vps_id, traceparent);
    gw.gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "untraced"))
        .first_valid()
        .await
        .unwrap_err();

    let logs = String::from_utf8(logs.0.lock().clone()).unwrap();
    let line = |mac: &str| {
        logs.lines()
            .find(|l| l.contains("looking the lease up") && l.contains(mac))
            .unwrap_or_else(|| panic!("no log line for {mac}: {logs}"))
            .to_string()
    };
    let traced = line("mac=traced");
    assert!(traced.contains(&format!("trace_id={TRACE_ID}")), "{traced}");
    let untraced = line("mac=untraced");
    assert!(
        !untraced.contains("gatemesh.serve"),
        "no span without a trace: {untraced}"
    );
}
