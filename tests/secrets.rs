//! Secrets (issue 5): the secrets (the shared one, and those of the
//! secrets files) and private keys never show in
//! `Debug` output or in logs, even at trace level, through a registration,
//! a refused one and a call.
//!
//! Alone in its binary: the log capture is a thread-local subscriber, and
//! tracing's callsite cache is shared with every other test thread.

mod common;

use common::logs::Logs;
use common::*;
use gatemesh_gateway::GatewayConfig;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;

#[tokio::test(flavor = "current_thread")]
async fn secrets_never_reach_logs_or_debug_output() {
    const GOOD: &str = "s3cr3t-good-7f1d";
    const BAD: &str = "s3cr3t-wrong-42aa";
    const SCOPED: &str = "s3cr3t-scoped-9c0e";
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(logs.clone())
        .finish();
    // Every task of this single-threaded runtime logs here.
    let _guard = tracing::subscriber::set_default(subscriber);

    let vars = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let secrets_file =
        std::env::temp_dir().join(format!("gatemesh-secrets-{}", std::process::id()));
    std::fs::write(&secrets_file, format!("dev {SCOPED}\n")).unwrap();
    let mut gw_config = GatewayConfig::from_vars(vars(&[
        ("GATEWAY_API_SECRET", GOOD),
        ("GATEWAY_ID", "gw"),
        ("GATEWAY_API_SECRETS_FILE", secrets_file.to_str().unwrap()),
        (
            "GATEWAY_CALLER_SECRETS_FILE",
            secrets_file.to_str().unwrap(),
        ),
    ]))
    .unwrap();
    let _ = std::fs::remove_file(&secrets_file);
    let ca = common::tls::Ca::new("secrets CA");
    let server = ca.server(&["127.0.0.1"]);
    let tls = gatemesh_gateway::GatewayTls::from_pem(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        None,
    )
    .unwrap();
    let key_line = server.key_pem.lines().nth(1).unwrap().to_string();
    gw_config.tls = Some(tls.clone());
    let service_config = gatemesh_service::ServiceConfig::from_vars(vars(&[
        ("VPS_GATEWAY_URL", "http://127.0.0.1:1"),
        ("VPS_GATEWAY_API_SECRET", GOOD),
    ]))
    .unwrap();
    let mut options = gatemesh_service::InstanceOptions::from_config(&service_config);
    options.tls = common::tls::client_tls(&ca, Some(&ca.client("x")));
    let debug = format!("{gw_config:?} {service_config:?} {options:?} {tls:?}");
    for leak in [GOOD, SCOPED, key_line.as_str()] {
        assert!(
            !debug.contains(leak),
            "Debug output shows {leak:?}: {debug}"
        );
    }

    // A registration, a refused one, and a call, all logged at trace.
    gw_config.tls = None;
    let gw = TestGateway::start_with(gw_config).await;
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(knows("aa", "vps-1"))
        .unwrap();
    let mut good_options = options.clone();
    good_options.id = "good".into();
    good_options.tls = Default::default();
    let good = gatemesh_service::Instance::new(good_options, registry).start([gw.url()]);
    let mut bad_options = options;
    bad_options.id = "bad".into();
    bad_options.secret = gatemesh_runtime::Secret::new(BAD);
    bad_options.tls = Default::default();
    let bad = gatemesh_service::Instance::new(bad_options, Registry::new()).start([gw.url()]);
    good.wait_connected().await;
    let _ = bad.links()[0]
        .watch()
        .wait_for(|s| s.last_error.is_some())
        .await;
    gw.gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.1", "aa"))
        .first_valid()
        .await
        .unwrap();
    good.shutdown().await;
    drop(bad);
    gw.stop().await;

    let logs = logs.text();
    assert!(logs.contains("instance registered"), "logs were captured");
    assert!(
        logs.contains("refused at the boundary"),
        "the refusal was logged"
    );
    for leak in [GOOD, BAD, SCOPED] {
        assert!(!logs.contains(leak), "the logs show {leak:?}");
    }
}
