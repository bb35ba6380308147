//! TLS and mTLS (issue 5), with certificates made inside the test: TLS
//! works end to end; mTLS takes a good client (its SPIFFE ID naming its id
//! and environment, or the older DNS-SAN form where allowed) and refuses
//! one with no certificate, one from another CA, an expired one, and one
//! whose hello names another instance. The attacks of issue 24 are in
//! `tests/trust_boundary.rs`.

mod common;

use std::time::Duration;

use common::tls::*;
use common::*;
use gatemesh_handlers::Registry;
use gatemesh_proto::methods::FindVpsByLease;
use gatemesh_service::{Instance, InstanceHandle, LinkStatus};
use tonic::Code;

async fn tls_gateway(ca: &Ca, client_ca: Option<&Ca>) -> TestGateway {
    let mut config = config();
    config.tls = Some(gateway_tls(ca, client_ca));
    TestGateway::start_with(config).await
}

fn tls_instance(gw: &TestGateway, id: &str, ca: &Ca, identity: Option<&Issued>) -> InstanceHandle {
    let mut registry = Registry::new();
    registry
        .method::<FindVpsByLease>(knows("52:54:00:aa:bb:cc", "vps-7"))
        .unwrap();
    let mut options = options(id, "prod");
    options.tls = client_tls(ca, identity);
    Instance::new(options, registry).start([https_url(gw)])
}

async fn resolves(gw: &TestGateway) {
    let answer = gw
        .gateway
        .mesh()
        .call::<FindVpsByLease>(lease("10.0.0.7", "52:54:00:aa:bb:cc"))
        .timeout(Duration::from_secs(10))
        .first_valid()
        .await
        .unwrap();
    assert_eq!(answer.value.vps_id, "vps-7");
}

/// The first error the instance's link reports; it never connected.
async fn first_error(instance: &InstanceHandle) -> LinkStatus {
    let status = instance.links()[0]
        .watch()
        .wait_for(|s| s.last_error.is_some())
        .await
        .unwrap()
        .clone();
    assert_eq!(status.connects, 0, "{status:?}");
    status
}

#[tokio::test]
async fn an_instance_reaches_a_tls_gateway_over_https() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, None).await;
    let instance = tls_instance(&gw, "prod-1", &ca, None);
    instance.wait_connected().await;
    gw.wait_instances(1).await;
    resolves(&gw).await;
}

#[tokio::test]
async fn a_cleartext_client_gets_nothing_from_a_tls_gateway() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, None).await;
    let instance = start_instance(&gw, "plain", "dev", knows("x", "y"));
    first_error(&instance).await;
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn an_instance_refuses_a_gateway_signed_by_an_unknown_ca() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, None).await;
    let other = Ca::new("some other CA");
    let instance = tls_instance(&gw, "prod-1", &other, None);
    let status = first_error(&instance).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("certificate"),
        "{status:?}"
    );
}

#[tokio::test]
async fn mtls_accepts_a_client_whose_certificate_names_its_instance_id() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let cert = ca.instance("prod", "prod-1");
    let instance = tls_instance(&gw, "prod-1", &ca, Some(&cert));
    instance.wait_connected().await;
    gw.wait_instances(1).await;
    resolves(&gw).await;
    assert_eq!(
        gw.gateway.instances().get("prod-1").unwrap().info.proof(),
        gatemesh_handlers::Proof::Spiffe
    );
    // The older form, where GATEWAY_TLS_DNS_SAN_ENVIRONMENTS allows it:
    // the DNS SAN is the id, or with none the common name.
    let mut config = config();
    config.tls = Some(gateway_tls(&ca, Some(&ca)));
    config.tls_dns_san_environments = Some("prod".into());
    let gw = TestGateway::start_with(config).await;
    tls_register(&gw, &ca, Some(&ca.client("prod-2")), "prod-2", Some(SECRET))
        .await
        .unwrap();
    let cn_only = ca.client_cn_only("prod-3");
    tls_register(&gw, &ca, Some(&cn_only), "prod-3", Some(SECRET))
        .await
        .unwrap();
    assert_eq!(
        gw.gateway.instances().get("prod-3").unwrap().info.proof(),
        gatemesh_handlers::Proof::LegacyCertificate
    );
}

#[tokio::test]
async fn mtls_refuses_a_client_without_a_certificate() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let instance = tls_instance(&gw, "prod-1", &ca, None);
    first_error(&instance).await;
    assert!(
        tls_register(&gw, &ca, None, "prod-1", Some(SECRET))
            .await
            .is_err()
    );
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn mtls_refuses_a_certificate_signed_by_another_ca() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let rogue = Ca::new("rogue CA").client("prod-1");
    let instance = tls_instance(&gw, "prod-1", &ca, Some(&rogue));
    first_error(&instance).await;
    assert!(
        tls_register(&gw, &ca, Some(&rogue), "prod-1", Some(SECRET))
            .await
            .is_err()
    );
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn mtls_refuses_an_expired_certificate() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let expired = ca.expired_client("prod-1");
    let instance = tls_instance(&gw, "prod-1", &ca, Some(&expired));
    first_error(&instance).await;
    assert!(
        tls_register(&gw, &ca, Some(&expired), "prod-1", Some(SECRET))
            .await
            .is_err()
    );
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn mtls_refuses_a_hello_that_names_another_instance_with_permission_denied() {
    let ca = Ca::new("gatemesh test CA");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let cert = ca.instance("prod", "prod-1");
    let err = tls_register(&gw, &ca, Some(&cert), "prod-2", Some(SECRET))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("prod-1"), "{err:?}");
    // A real instance that lies about its id never registers either.
    let liar = tls_instance(&gw, "beta-9", &ca, Some(&cert));
    let status = first_error(&liar).await;
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("PERMISSION_DENIED"),
        "{status:?}"
    );
    assert_eq!(gw.gateway.instances().len(), 0);
}

#[tokio::test]
async fn under_mtls_the_secret_still_applies_unless_made_optional() {
    let ca = Ca::new("gatemesh test CA");
    let cert = ca.instance("prod", "prod-1");
    let gw = tls_gateway(&ca, Some(&ca)).await;
    let err = tls_register(&gw, &ca, Some(&cert), "prod-1", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut config = config();
    config.tls = Some(gateway_tls(&ca, Some(&ca)));
    config.tls_secret_optional = true;
    let gw = TestGateway::start_with(config).await;
    tls_register(&gw, &ca, Some(&cert), "prod-1", None)
        .await
        .unwrap();
    // A wrong secret is refused even then.
    let err = tls_register(&gw, &ca, Some(&cert), "prod-1", Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// `ListInstances` over mTLS with `cert`, with or without the secret.
async fn admin_list(
    gw: &TestGateway,
    ca: &Ca,
    cert: &Issued,
    secret: Option<&str>,
) -> Result<usize, tonic::Status> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.pem))
        .identity(Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let channel = Endpoint::from_shared(https_url(gw))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = gatemesh_proto::pb::gateway_admin_client::GatewayAdminClient::new(channel);
    let mut request = tonic::Request::new(gatemesh_proto::pb::ListInstancesRequest {});
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert(gatemesh_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    }
    Ok(client
        .list_instances(request)
        .await?
        .into_inner()
        .instances
        .len())
}

#[tokio::test]
async fn the_admin_api_follows_the_same_secret_rule_under_mtls() {
    let ca = Ca::new("gatemesh test CA");
    // An operator of every environment, in the SPIFFE form.
    let cert = ca.with_uri("spiffe://gatemesh/operator/ops-cli", None, None);
    let gw = tls_gateway(&ca, Some(&ca)).await;
    assert_eq!(admin_list(&gw, &ca, &cert, Some(SECRET)).await.unwrap(), 0);
    let err = admin_list(&gw, &ca, &cert, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut config = config();
    config.tls = Some(gateway_tls(&ca, Some(&ca)));
    config.tls_secret_optional = true;
    let gw = TestGateway::start_with(config).await;
    assert_eq!(admin_list(&gw, &ca, &cert, None).await.unwrap(), 0);
    let err = admin_list(&gw, &ca, &cert, Some("wrong"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Without a secret, a certificate binds the caller to what it names:
    // one with no SPIFFE ID names no environment, and is refused.
    let err = admin_list(&gw, &ca, &ca.client("ops-cli"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}
