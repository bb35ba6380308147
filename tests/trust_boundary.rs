//! The trust boundary (issue 24, first half): an environment is proven by
//! a credential, checked once at the hello, and nothing downstream reads
//! a label the peer typed. Each test is an attack that worked before:
//!
//! - a dev certificate saying hello as prod (and what it then did to
//!   prod's IP reservation and to a node's DNS names);
//! - a dev-scoped secret saying hello as prod;
//! - a dev-scoped caller reaching prod through the admin API and
//!   `/instances`;
//! - a legacy DNS-SAN certificate, refused unless the operator allows it;
//! - wrong secrets, logged once a minute per address and counted;
//! - an instance refused for its identity, which backs off to the maximum
//!   and says why; one whose certificate names someone else, which stops;
//! - certificates rotated under a running gateway and instance.
//!
//! The other half of #24 (header allow-list, IP pool edges, the HTTP
//! connection cap) is `tests/trust_edges.rs`.

mod common;
mod dnsmasq_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::logs::Logs;
use common::process::{binary, free_port};
use common::tls::{Ca, Issued, replace_file, spiffe_id};
use common::{SECRET, TestGateway, http, knows, start_instance};
use dnsmasq_support::TempDir;
use gatemesh_gateway::GatewayConfig;
use gatemesh_node::{Node, NodeSettings};
use gatemesh_proto::pb;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const REFUSED: &str = "gatemesh_auth_refused_total";

/// `GATEWAY_*` settings of a test gateway on loopback, plus `extra`.
fn vars(extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut all = vec![
        ("GATEWAY_API_SECRET".to_string(), SECRET.to_string()),
        ("GATEWAY_ID".to_string(), "gw-trust".to_string()),
        ("GATEWAY_BIND".to_string(), "127.0.0.1".to_string()),
    ];
    all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    all
}

/// A gateway configured by `extra` settings, as `vps-gateway` reads them.
async fn gateway(extra: &[(&str, String)]) -> TestGateway {
    let mut config = GatewayConfig::from_vars(vars(extra)).unwrap();
    config.reconnect_spread_ms = 50;
    config.drain_grace_ms = 2_000;
    TestGateway::start_with(config).await
}

/// The gateway's TLS files, as an operator installs them: a certificate
/// for 127.0.0.1 and its key, and the CA(s) of client certificates.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

impl TlsFiles {
    fn write(dir: &TempDir, server: &Ca, client_cas: &[&Ca]) -> Self {
        let (cert, key) = server
            .server(&["127.0.0.1", "localhost"])
            .write(&dir.0, "gateway");
        let client_ca = dir.join("client-ca.crt");
        std::fs::write(&client_ca, bundle(client_cas)).unwrap();
        Self {
            cert,
            key,
            client_ca,
        }
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GATEWAY_TLS_CERT", path(&self.cert)),
            ("GATEWAY_TLS_KEY", path(&self.key)),
            ("GATEWAY_TLS_CLIENT_CA", path(&self.client_ca)),
        ]
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Several CA certificates in one PEM file.
fn bundle(cas: &[&Ca]) -> String {
    cas.iter().map(|ca| ca.pem.as_str()).collect()
}

/// How a scripted instance reaches the gateway: over TLS trusting a CA
/// and presenting a certificate, or in cleartext; with a secret or none.
#[derive(Clone, Copy)]
struct Dial<'a> {
    addr: SocketAddr,
    tls: Option<(&'a Ca, Option<&'a Issued>)>,
    secret: Option<&'a str>,
}

impl<'a> Dial<'a> {
    fn plain(addr: SocketAddr, secret: &'a str) -> Self {
        Self {
            addr,
            tls: None,
            secret: Some(secret),
        }
    }

    fn tls(addr: SocketAddr, ca: &'a Ca, cert: &'a Issued) -> Self {
        Self {
            addr,
            tls: Some((ca, Some(cert))),
            secret: Some(SECRET),
        }
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, tonic::Status> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.addr)).unwrap();
        if let Some((ca, identity)) = self.tls {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
            if let Some(identity) = identity {
                tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
            }
            endpoint = endpoint.tls_config(tls).unwrap();
        }
        endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))
    }
}

/// A scripted instance on its stream: it says what the test says.
struct Scripted {
    tx: mpsc::Sender<pb::InstanceMessage>,
    inbound: tonic::Streaming<pb::GatewayMessage>,
    next_id: u64,
}

/// Opens `RegisterGateway` and says hello as `id` of `env`: the stream
/// once welcomed, or the gateway's refusal.
async fn hello(dial: Dial<'_>, id: &str, env: &str) -> Result<Scripted, tonic::Status> {
    let channel = dial.channel().await?;
    let (tx, rx) = mpsc::channel(64);
    tx.send(pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Hello(pb::Hello {
            instance_id: id.into(),
            environment: env.into(),
            version: "scripted".into(),
            methods: vec!["FindVPSByLease".into()],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    })
    .await
    .unwrap();
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    if let Some(secret) = dial.secret {
        request
            .metadata_mut()
            .insert(gatemesh_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    }
    let mut inbound = pb::gateway_client::GatewayClient::new(channel)
        .register_gateway(request)
        .await?
        .into_inner();
    match inbound.message().await? {
        Some(pb::GatewayMessage {
            kind: Some(pb::gateway_message::Kind::Welcome(_)),
        }) => Ok(Scripted {
            tx,
            inbound,
            next_id: 0,
        }),
        other => Err(tonic::Status::internal(format!(
            "expected welcome, got {other:?}"
        ))),
    }
}

/// The code of a refused hello (`OK` if it was welcomed).
async fn hello_code(dial: Dial<'_>, id: &str, env: &str) -> Code {
    match hello(dial, id, env).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

impl Scripted {
    async fn send(&self, kind: pb::instance_message::Kind) {
        let _ = self.tx.send(pb::InstanceMessage { kind: Some(kind) }).await;
    }

    /// Calls a gateway method on the stream; answers pings meanwhile.
    async fn call(&mut self, method: &str, payload: Vec<u8>) -> Result<Bytes, pb::Status> {
        use pb::gateway_message::Kind;
        self.next_id += 1;
        let id = self.next_id;
        self.send(pb::instance_message::Kind::Request(pb::Request {
            id,
            method: method.into(),
            payload: payload.into(),
            timeout_ms: 5_000,
            metadata: Vec::new(),
        }))
        .await;
        loop {
            match self.inbound.message().await {
                Ok(Some(pb::GatewayMessage {
                    kind: Some(Kind::Response(r)),
                })) if r.id == id => {
                    return match r.result {
                        Some(pb::response::Result::Payload(p)) => Ok(p),
                        Some(pb::response::Result::Status(s)) => Err(s),
                        None => Err(pb::Status::default()),
                    };
                }
                Ok(Some(pb::GatewayMessage {
                    kind: Some(Kind::Ping(p)),
                })) => {
                    self.send(pb::instance_message::Kind::Pong(pb::Pong {
                        nonce: p.nonce,
                    }))
                    .await
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(pb::Status {
                        code: Code::Unavailable as i32,
                        message: "stream ended".into(),
                        refused: false,
                    });
                }
            }
        }
    }

    /// Claims every lease the gateway asks about, as `vps_id`, until the
    /// stream ends.
    async fn claim_every_lease(mut self, vps_id: &'static str) {
        use pb::gateway_message::Kind;
        while let Ok(Some(message)) = self.inbound.message().await {
            match message.kind {
                Some(Kind::Request(r)) => {
                    let answer = pb::FindVpsByLeaseResponse {
                        vps_id: vps_id.into(),
                        organization_id: "org-evil".into(),
                    };
                    self.send(pb::instance_message::Kind::Response(pb::Response {
                        id: r.id,
                        result: Some(pb::response::Result::Payload(answer.encode_to_vec().into())),
                    }))
                    .await;
                }
                Some(Kind::Ping(p)) => {
                    self.send(pb::instance_message::Kind::Pong(pb::Pong {
                        nonce: p.nonce,
                    }))
                    .await
                }
                _ => {}
            }
        }
    }
}

/// The reservations file as the allocator reads it back.
fn reservations_on_disk(path: &Path) -> Vec<pb::IpReservation> {
    let text = std::fs::read_to_string(path).unwrap();
    gatemesh_ipam::table::parse(&text)
        .unwrap()
        .iter()
        .map(Into::into)
        .collect()
}

/// A dev instance's certificate says hello as prod. Before, the
/// certificate bound only the instance id: the stream registered as prod,
/// released prod's IP reservation, took its address, and named a lease on
/// a node that lets only prod name its leases.
#[tokio::test]
async fn a_dev_certificate_saying_hello_as_prod_is_refused_and_touches_nothing_of_prods() {
    let dir = TempDir::new("trust-dev-as-prod");
    let ca = Ca::new("trust CA");
    let tls = TlsFiles::write(&dir, &ca, &[&ca]);
    // prod's VPS holds 10.24.0.10 since before.
    let reservations = dir.join("vps.dhcp-hosts");
    std::fs::write(
        &reservations,
        "# gatemesh-ipam v1 ip=10.24.0.10 mac=52:54:00:24:00:02 vps=vps-prod-1 org=org-1 \
         env=prod at=1764453000\n52:54:00:24:00:02,10.24.0.10,vps-prod-1\n",
    )
    .unwrap();
    // A VM holds a lease nobody has named yet.
    let leases = dir.join("dnsmasq.leases");
    let hosts = dir.join("vps.hosts");
    let later = gatemesh_dnsmasq::unix_now() + 3600;
    std::fs::write(
        &leases,
        format!("{later} 52:54:00:24:00:01 10.24.0.50 * *\n"),
    )
    .unwrap();
    let mut settings = tls.vars();
    settings.extend([
        ("GATEWAY_IP_POOL", "10.24.0.10-10.24.0.20".to_string()),
        ("GATEWAY_IP_RESERVATIONS_FILE", path(&reservations)),
        ("GATEWAY_DHCP_LEASES_FILE", path(&leases)),
        ("GATEWAY_DHCP_HOSTS_FILE", path(&hosts)),
        ("GATEWAY_DHCP_ENVIRONMENTS", "prod".to_string()),
        ("GATEWAY_DHCP_CALL_TIMEOUT_MS", "1000".to_string()),
        ("GATEWAY_DHCP_RETRY_MAX_MS", "200".to_string()),
    ]);
    let node = Node::start(NodeSettings::from_vars(vars(&settings)).unwrap()).unwrap();
    let dhcp = node.dhcp.as_ref().expect("the DHCP manager").handle.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(node.gateway.clone(), listener);

    let dev_cert = ca.instance("dev", "dev-1");
    let dial = Dial::tls(gw.addr, &ca, &dev_cert);
    let attack = hello(dial, "dev-1", "prod").await;
    let mut damage = Vec::new();
    let code = match attack {
        Err(status) => status.code(),
        Ok(mut liar) => {
            // What a stream registered as prod can do to prod.
            let release = pb::ReleaseIpRequest {
                vps_id: "vps-prod-1".into(),
                mac: String::new(),
            };
            damage.push(format!(
                "ReleaseIP(vps-prod-1): {:?}",
                liar.call("ReleaseIP", release.encode_to_vec()).await
            ));
            let take = pb::AllocateIpRequest {
                vps_id: "vps-evil".into(),
                organization_id: "org-evil".into(),
                mac: "52:54:00:24:00:66".into(),
                ip: "10.24.0.10".into(),
            };
            damage.push(format!(
                "AllocateIP(10.24.0.10): {:?}",
                liar.call("AllocateIP", take.encode_to_vec()).await
            ));
            tokio::spawn(liar.claim_every_lease("vps-evil"));
            Code::Ok
        }
    };
    assert_eq!(
        code,
        Code::PermissionDenied,
        "dev-1's certificate registered as prod: {damage:?}"
    );
    assert!(gw.gateway.instances().is_empty(), "nothing registered");
    // The DHCP manager asked for the lease again and again: no prod
    // instance answered, so no name was written.
    assert!(
        dhcp.wait_until(|s| s.calls >= 3 || s.resolved > 0).await,
        "the DHCP manager runs"
    );
    assert_eq!(dhcp.status().resolved, 0);
    let names = std::fs::read_to_string(&hosts).unwrap_or_default();
    assert!(!names.contains("vps-evil"), "{names}");
    // prod's reservation is prod's still.
    let held = reservations_on_disk(&reservations);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (
            held[0].vps_id.as_str(),
            held[0].ip.as_str(),
            held[0].environment.as_str()
        ),
        ("vps-prod-1", "10.24.0.10", "prod")
    );
    // The same certificate says hello as what it names.
    let honest = hello(dial, "dev-1", "dev").await;
    assert!(honest.is_ok(), "{:?}", honest.err());
}

/// Instance secrets scoped to environments (`GATEWAY_API_SECRETS_FILE`):
/// the dev secret says hello only as dev, and what it registers as is dev
/// everywhere (the IP allocator's environment rule included).
#[tokio::test]
async fn a_dev_scoped_secret_saying_hello_as_prod_is_refused() {
    let dir = TempDir::new("trust-dev-secret");
    let secrets = dir.join("api-secrets");
    std::fs::write(
        &secrets,
        "# instance secrets: <environments> <secret>\n\ndev  s3cret-dev-0123456\nprod s3cret-prod\n",
    )
    .unwrap();
    let reservations = dir.join("vps.dhcp-hosts");
    let settings = [
        ("GATEWAY_API_SECRETS_FILE", path(&secrets)),
        ("GATEWAY_IP_POOL", "10.25.0.10-10.25.0.20".to_string()),
        ("GATEWAY_IP_RESERVATIONS_FILE", path(&reservations)),
    ];
    let node = Node::start(NodeSettings::from_vars(vars(&settings)).unwrap()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = TestGateway::serve(node.gateway.clone(), listener);

    let dev = Dial::plain(gw.addr, "s3cret-dev-0123456");
    assert_eq!(
        hello_code(dev, "dev-1", "prod").await,
        Code::PermissionDenied
    );
    assert!(gw.gateway.instances().is_empty(), "nothing registered");
    let prod = Dial::plain(gw.addr, "s3cret-prod");
    assert_eq!(
        hello_code(prod, "prod-1", "dev").await,
        Code::PermissionDenied
    );
    assert_eq!(
        hello_code(Dial::plain(gw.addr, "s3cret-nope"), "dev-1", "dev").await,
        Code::Unauthenticated
    );

    // Each secret says hello as its own environment; the shared secret
    // (GATEWAY_API_SECRET) as any.
    let mut prod_1 = hello(prod, "prod-1", "prod").await.unwrap();
    // A dev secret may name any id of dev, but not one a stream of another
    // environment holds: that would push prod-1 off and take its calls.
    assert_eq!(
        hello_code(dev, "prod-1", "dev").await,
        Code::PermissionDenied
    );
    let held: Vec<(String, String)> = gw
        .gateway
        .instances()
        .snapshot()
        .iter()
        .map(|p| (p.id().to_string(), p.info.environment().to_string()))
        .collect();
    assert_eq!(held, [("prod-1".to_string(), "prod".to_string())]);
    let mut dev_1 = hello(dev, "dev-1", "dev").await.unwrap();
    let _beta_1 = hello(Dial::plain(gw.addr, SECRET), "beta-1", "beta")
        .await
        .unwrap();
    let alloc = pb::AllocateIpRequest {
        vps_id: "vps-prod-1".into(),
        organization_id: "org-1".into(),
        mac: "52:54:00:25:00:01".into(),
        ip: String::new(),
    };
    let answer = prod_1
        .call("AllocateIP", alloc.encode_to_vec())
        .await
        .unwrap();
    let reservation = pb::AllocateIpResponse::decode(answer)
        .unwrap()
        .reservation
        .unwrap();
    assert_eq!(reservation.environment, "prod");
    let release = pb::ReleaseIpRequest {
        vps_id: "vps-prod-1".into(),
        mac: String::new(),
    };
    let refused = dev_1
        .call("ReleaseIP", release.encode_to_vec())
        .await
        .unwrap_err();
    assert_eq!(refused.code, Code::PermissionDenied as i32, "{refused:?}");
}

/// A bad line in the secrets file stops the gateway with one line naming
/// the file and the line.
#[test]
fn a_bad_secrets_file_line_stops_the_gateway_naming_the_file_and_line() {
    let dir = TempDir::new("trust-bad-secrets");
    let secrets = dir.join("api-secrets");
    std::fs::write(&secrets, "dev s3cret-dev-0123456\n\nprod\n").unwrap();
    let out = Command::new(binary("vps-gateway"))
        .env_clear()
        .env("GATEWAY_API_SECRETS_FILE", &secrets)
        .env("GATEWAY_GRPC_PORT", free_port().to_string())
        .env("GATEWAY_HTTP_PORT", free_port().to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected = format!(
        "vps-gateway: GATEWAY_API_SECRETS_FILE: {}:3: ",
        secrets.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
}

type AdminClient = pb::gateway_admin_client::GatewayAdminClient<tonic::transport::Channel>;

fn admin(gw: &TestGateway) -> AdminClient {
    AdminClient::new(
        tonic::transport::Channel::from_shared(gw.url())
            .unwrap()
            .connect_lazy(),
    )
}

fn with_secret<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(gatemesh_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    request
}

fn find(strategy: pb::Strategy, env: &str, instance: &str) -> pb::CallRequest {
    pb::CallRequest {
        method: "FindVPSByLease".into(),
        payload: common::lease("10.0.0.1", "52:54:00:aa:bb:cc")
            .encode_to_vec()
            .into(),
        strategy: strategy as i32,
        instance_id: instance.into(),
        environment: env.into(),
        timeout_ms: 5_000,
    }
}

fn result_ids(response: &pb::CallResponse) -> Vec<&str> {
    response
        .results
        .iter()
        .map(|r| r.instance_id.as_str())
        .collect()
}

/// Caller secrets scoped to environments (`GATEWAY_CALLER_SECRETS_FILE`):
/// a dev operator's calls and listings reach dev only.
#[tokio::test]
async fn a_dev_scoped_caller_cannot_reach_prod_through_the_admin_api() {
    let dir = TempDir::new("trust-dev-caller");
    let callers = dir.join("caller-secrets");
    std::fs::write(&callers, "dev ops-dev\ndev,beta ops-dev-beta\n* ops-all\n").unwrap();
    let gw = gateway(&[("GATEWAY_CALLER_SECRETS_FILE", path(&callers))]).await;
    let _dev = start_instance(&gw, "dev-1", "dev", knows("52:54:00:aa:bb:cc", "vps-dev"));
    let _prod = start_instance(
        &gw,
        "prod-1",
        "prod",
        knows("52:54:00:aa:bb:cc", "vps-prod"),
    );
    gw.wait_instances(2).await;
    let mut client = admin(&gw);

    // Naming prod: refused.
    for env in ["prod", "staging"] {
        let err = client
            .call(with_secret(find(pb::Strategy::All, env, ""), "ops-dev"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{env}: {err:?}");
    }
    // Naming a prod instance: refused, and told exactly what an id that is
    // connected nowhere is told, so ids of other environments cannot be
    // probed.
    let told = |id: &'static str, env: &'static str| {
        let mut client = admin(&gw);
        async move {
            let err = client
                .call(with_secret(find(pb::Strategy::All, env, id), "ops-dev"))
                .await
                .unwrap_err();
            (err.code(), err.message().replace(id, "<id>"))
        }
    };
    let nowhere = told("nowhere-1", "").await;
    assert_eq!(nowhere.0, Code::Unavailable, "{nowhere:?}");
    assert_eq!(told("prod-1", "").await, nowhere);
    assert_eq!(told("prod-1", "dev").await, told("nowhere-1", "dev").await);
    // The plain gRPC path is confined the same way.
    let channel = Endpoint::from_shared(gw.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut methods = pb::instance_methods_client::InstanceMethodsClient::new(channel);
    let plain = |route: &[(&'static str, &'static str)]| {
        let mut request = tonic::Request::new(pb::FindVpsByLeaseRequest {
            ip: String::new(),
            mac: "52:54:00:aa:bb:cc".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", "Bearer ops-dev".parse().unwrap());
        for (key, value) in route {
            request.metadata_mut().insert(*key, value.parse().unwrap());
        }
        request
    };
    let err = methods
        .find_vps_by_lease(plain(&[("gatemesh-environment", "prod")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = methods
        .find_vps_by_lease(plain(&[("gatemesh-instance", "prod-1")]))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message().replace("prod-1", "<id>")),
        nowhere,
        "{err:?}"
    );
    let answer = methods.find_vps_by_lease(plain(&[])).await.unwrap();
    assert_eq!(answer.metadata().get("gatemesh-instance").unwrap(), "dev-1");
    assert_eq!(answer.into_inner().vps_id, "vps-dev");
    // No filter: only its environments are asked.
    let all = client
        .call(with_secret(find(pb::Strategy::All, "", ""), "ops-dev"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result_ids(&all), ["dev-1"]);
    let first = client
        .call(with_secret(
            find(pb::Strategy::FirstValid, "", ""),
            "ops-dev",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result_ids(&first), ["dev-1"]);
    // Its own environment, by name: answered.
    let named = client
        .call(with_secret(
            find(pb::Strategy::All, "dev", "dev-1"),
            "ops-dev",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(result_ids(&named), ["dev-1"]);
    let listed: Vec<String> = client
        .list_instances(with_secret(pb::ListInstancesRequest {}, "ops-dev"))
        .await
        .unwrap()
        .into_inner()
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    assert_eq!(listed, ["dev-1"]);
    // A secret for any environment, from the file or GATEWAY_API_SECRET,
    // reaches both.
    for secret in ["ops-all", SECRET] {
        let all = client
            .call(with_secret(find(pb::Strategy::All, "", ""), secret))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(result_ids(&all), ["dev-1", "prod-1"], "{secret}");
    }
    let err = client
        .call(with_secret(
            find(pb::Strategy::All, "prod", ""),
            "ops-dev-beta",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // An instance secret is not a caller secret, nor the reverse.
    let err = client
        .list_instances(with_secret(pb::ListInstancesRequest {}, "s3cret-nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        hello_code(Dial::plain(gw.addr, "ops-dev"), "dev-9", "dev").await,
        Code::Unauthenticated
    );

    // HTTP /instances off loopback: the same confinement.
    let addr = http::serve_exposed(&gw.gateway).await;
    let (status, body) =
        http::get_with(addr, "/instances", &[("authorization", "Bearer ops-dev")]).await;
    assert_eq!(status, 200, "{body}");
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["dev-1"]);
}

/// Before, a certificate bound only its DNS SAN to the instance id, and the
/// environment was taken on faith. Now such a certificate is refused,
/// unless `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS` allows it for the environment
/// its hello names; SPIFFE IDs of another trust domain are refused.
#[tokio::test]
async fn a_legacy_dns_san_certificate_is_refused_unless_allowed_for_its_environment() {
    let dir = TempDir::new("trust-legacy");
    let ca = Ca::new("trust CA");
    let tls = TlsFiles::write(&dir, &ca, &[&ca]);
    let gw = gateway(&tls.vars()).await;
    let prod_legacy = ca.client("prod-1");
    assert_eq!(
        hello_code(Dial::tls(gw.addr, &ca, &prod_legacy), "prod-1", "prod").await,
        Code::PermissionDenied
    );
    let foreign = ca.with_uri("spiffe://elsewhere/env/prod/instance/prod-1", None, None);
    assert_eq!(
        hello_code(Dial::tls(gw.addr, &ca, &foreign), "prod-1", "prod").await,
        Code::PermissionDenied
    );
    assert!(gw.gateway.instances().is_empty());

    let mut settings = tls.vars();
    settings.push(("GATEWAY_TLS_DNS_SAN_ENVIRONMENTS", "dev,beta".to_string()));
    let gw = gateway(&settings).await;
    let dev_legacy = ca.client("dev-1");
    let dial = Dial::tls(gw.addr, &ca, &dev_legacy);
    assert_eq!(
        hello_code(dial, "dev-1", "prod").await,
        Code::PermissionDenied
    );
    assert_eq!(
        hello_code(dial, "dev-2", "dev").await,
        Code::PermissionDenied
    );
    assert_eq!(
        hello_code(Dial::tls(gw.addr, &ca, &prod_legacy), "prod-1", "prod").await,
        Code::PermissionDenied
    );
    let _dev = hello(dial, "dev-1", "dev").await.unwrap();
    // The certificate may be dev-1 of beta too, but not while dev-1 of dev
    // holds the id: a stream of another environment does not take it over.
    assert_eq!(
        hello_code(dial, "dev-1", "beta").await,
        Code::PermissionDenied
    );
    // SPIFFE certificates work beside them.
    let prod = ca.instance("prod", "prod-1");
    let _prod = hello(Dial::tls(gw.addr, &ca, &prod), "prod-1", "prod")
        .await
        .unwrap();
}

/// Wrong and missing secrets on both ports: each is counted by port and
/// reason, and logged at most once a minute per peer address.
#[tokio::test]
async fn wrong_secrets_are_counted_by_port_and_reason_and_logged_once_a_minute_per_address() {
    let (logs, _guard) = Logs::capture();
    let gw = gateway(&[]).await;
    let metrics = http::serve(&gw.gateway).await;
    let (_, body) = http::get(metrics, "/metrics").await;
    for port in ["grpc", "http"] {
        for reason in [
            "no_credential",
            "secret",
            "certificate",
            "identity",
            "environment",
        ] {
            let labels = format!("port=\"{port}\",reason=\"{reason}\"");
            assert!(
                body.contains(&format!("{REFUSED}{{{labels}}} 0")),
                "{port}/{reason} present at 0 from the start:\n{body}"
            );
        }
    }

    for _ in 0..3 {
        assert_eq!(
            hello_code(Dial::plain(gw.addr, "a-wrong-guess-0000"), "i-1", "dev").await,
            Code::Unauthenticated
        );
    }
    let none = Dial {
        secret: None,
        ..Dial::plain(gw.addr, "")
    };
    assert_eq!(hello_code(none, "i-1", "dev").await, Code::Unauthenticated);
    let err = admin(&gw)
        .list_instances(with_secret(
            pb::ListInstancesRequest {},
            "a-wrong-guess-0000",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let exposed = http::serve_exposed(&gw.gateway).await;
    let (status, _) = http::get_with(exposed, "/instances", &[]).await;
    assert_eq!(status, 401);
    let (status, _) =
        http::get_with(exposed, "/instances", &[("authorization", "Bearer guess")]).await;
    assert_eq!(status, 401);

    let (_, body) = http::get(metrics, "/metrics").await;
    let count = |port: &str, reason: &str| {
        http::sample(
            &body,
            REFUSED,
            &format!("port=\"{port}\",reason=\"{reason}\""),
        )
    };
    assert_eq!(count("grpc", "secret"), 4.0, "{body}");
    assert_eq!(count("grpc", "no_credential"), 1.0);
    assert_eq!(count("http", "secret"), 1.0);
    assert_eq!(count("http", "no_credential"), 1.0);
    assert_eq!(count("grpc", "identity"), 0.0);
    // Seven refusals from 127.0.0.1 within a minute: one line.
    let lines = logs.lines_with("refused at the boundary");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("127.0.0.1") && lines[0].contains("WARN"),
        "{}",
        lines[0]
    );
}

/// Runs `vps-service` with `env` and returns the first log line that says
/// when the link dials again; the process is killed after.
fn first_retry_line(env: &[(&str, String)]) -> String {
    let mut command = Command::new(binary("vps-service"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(command.spawn().unwrap());
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("retry_in_ms") {
            return line;
        }
    }
    panic!("vps-service ended without saying when it retries");
}

/// An instance whose hello is refused for its identity will be refused
/// again until someone fixes its configuration: it says why, as an error,
/// and dials again only at `VPS_RECONNECT_MAX_MS`, not the usual schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refused_for_its_identity_backs_off_to_the_maximum_and_says_why() {
    let base = |gw: &TestGateway, secret: &str, env: &str| {
        vec![
            ("VPS_GATEWAY_URL", gw.url()),
            ("VPS_GATEWAY_API_SECRET", secret.to_string()),
            ("VPS_INSTANCE_ID", "inst-1".to_string()),
            ("VPS_ENVIRONMENT", env.to_string()),
            ("VPS_RECONNECT_BASE_MS", "20".to_string()),
            ("VPS_RECONNECT_MAX_MS", "600000".to_string()),
        ]
    };
    let check = |what: &'static str, env: Vec<(&'static str, String)>, code: &'static str| async move {
        let line = tokio::task::spawn_blocking(move || first_retry_line(&env))
            .await
            .unwrap();
        assert!(line.contains("ERROR"), "{what}: {line}");
        assert!(line.contains(code), "{what}: {line}");
        assert!(line.contains("retry_in_ms=600000"), "{what}: {line}");
    };
    let plain = gateway(&[]).await;
    check(
        "a wrong secret",
        base(&plain, "a-wrong-guess-0000", "dev"),
        "UNAUTHENTICATED",
    )
    .await;
    let dir = TempDir::new("trust-backoff");
    let secrets = dir.join("api-secrets");
    std::fs::write(&secrets, "dev s3cret-dev-0123456\n").unwrap();
    let scoped = gateway(&[("GATEWAY_API_SECRETS_FILE", path(&secrets))]).await;
    check(
        "a dev secret saying hello as prod",
        base(&scoped, "s3cret-dev-0123456", "prod"),
        "PERMISSION_DENIED",
    )
    .await;
}

/// `vps-service` checks at start that its certificate names it: a
/// mismatch is one line and exit code 1, not a refusal at every dial.
#[test]
fn an_instance_whose_certificate_names_someone_else_stops_at_start() {
    let dir = TempDir::new("trust-self-check");
    let ca = Ca::new("trust CA");
    let ca_path = ca.write(&dir.0, "ca");
    let (cert, key) = ca.instance("dev", "dev-1").write(&dir.0, "dev-1");
    let (legacy_cert, legacy_key) = ca.client("dev-1").write(&dir.0, "legacy");
    let run = |id: &str, env: &str, cert: &Path, key: &Path, domain: Option<&str>| {
        let mut command = Command::new(binary("vps-service"));
        command
            .env_clear()
            .env(
                "VPS_GATEWAY_URL",
                format!("https://127.0.0.1:{}", free_port()),
            )
            .env("VPS_GATEWAY_API_SECRET", SECRET)
            .env("VPS_INSTANCE_ID", id)
            .env("VPS_ENVIRONMENT", env)
            .env("VPS_TLS_CA", &ca_path)
            .env("VPS_TLS_CERT", cert)
            .env("VPS_TLS_KEY", key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(domain) = domain {
            command.env("VPS_TLS_TRUST_DOMAIN", domain);
        }
        let mut child = command.spawn().unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "vps-service as {id} of {env} started with {}",
                    cert.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (id, env, domain) in [
        ("dev-1", "prod", None),
        ("dev-2", "dev", None),
        ("dev-1", "dev", Some("elsewhere")),
    ] {
        let (code, stderr) = run(id, env, &cert, &key, domain);
        assert_eq!(code, Some(1), "{id} {env}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("vps-service: VPS_TLS_CERT: "),
            "{stderr}"
        );
        assert!(stderr.contains(&spiffe_id("dev", "dev-1")), "{stderr}");
    }
    // The legacy form names the id only: another id stops it too.
    let (code, stderr) = run("dev-2", "dev", &legacy_cert, &legacy_key, None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("vps-service: VPS_TLS_CERT: "),
        "{stderr}"
    );
}

/// The TLS handshake of the gRPC port is the gateway's own now; a stream
/// that authenticated must outlive the deadline for unauthenticated
/// connections, over TLS as in cleartext.
#[tokio::test]
async fn a_tls_stream_outlives_the_handshake_deadline() {
    let dir = TempDir::new("trust-tls-deadline");
    let ca = Ca::new("trust CA");
    let tls = TlsFiles::write(&dir, &ca, &[&ca]);
    let mut settings = tls.vars();
    settings.extend([
        ("GATEWAY_CONN_HANDSHAKE_TIMEOUT_MS", "200".to_string()),
        ("GATEWAY_HEARTBEAT_INTERVAL_MS", "50".to_string()),
    ]);
    let gw = gateway(&settings).await;
    let cert = ca.instance("prod", "prod-1");
    let mut stream = hello(Dial::tls(gw.addr, &ca, &cert), "prod-1", "prod")
        .await
        .unwrap();
    // Twenty pings at 50 ms: well past the 200 ms deadline.
    let mut pings = 0;
    while pings < 20 {
        match stream.inbound.message().await {
            Ok(Some(pb::GatewayMessage {
                kind: Some(pb::gateway_message::Kind::Ping(p)),
            })) => {
                pings += 1;
                stream
                    .send(pb::instance_message::Kind::Pong(pb::Pong {
                        nonce: p.nonce,
                    }))
                    .await;
            }
            Ok(Some(_)) => {}
            other => panic!("the stream ended after {pings} pings: {other:?}"),
        }
    }
    assert_eq!(gw.gateway.instances().len(), 1);
}

/// Certificates, keys and CAs replaced on disk under a running gateway and
/// a running `vps-service`: new connections use the new ones, the
/// registered stream stays up, and the old instance certificate, once
/// expired, opens no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_a_running_gateway_and_instance() {
    let service = binary("vps-service");
    let dir = TempDir::new("trust-rotation");
    let (old_ca, new_ca) = (Ca::new("CA 2025"), Ca::new("CA 2026"));
    let gateway_files = TlsFiles::write(&dir, &old_ca, &[&old_ca]);
    let gw = gateway(&gateway_files.vars()).await;
    let metrics = http::serve(&gw.gateway).await;

    // The instance starts with a certificate that expires soon.
    let instance_ca = old_ca.write(&dir.0, "instance-ca");
    let short = old_ca.instance_until("dev", "dev-1", SystemTime::now() + Duration::from_secs(12));
    let (instance_cert, instance_key) = short.write(&dir.0, "dev-1");
    let instance = common::process::Proc::spawn(
        "vps-service",
        &service,
        &[
            ("VPS_GATEWAY_URL", format!("https://{}", gw.addr)),
            ("VPS_GATEWAY_API_SECRET", SECRET.to_string()),
            ("VPS_INSTANCE_ID", "dev-1".to_string()),
            ("VPS_ENVIRONMENT", "dev".to_string()),
            ("VPS_TLS_CA", path(&instance_ca)),
            ("VPS_TLS_CERT", path(&instance_cert)),
            ("VPS_TLS_KEY", path(&instance_key)),
            ("VPS_RECONNECT_BASE_MS", "20".to_string()),
            ("VPS_RECONNECT_MAX_MS", "200".to_string()),
        ],
    );
    gw.wait_instances(1).await;
    let first = gw.gateway.instances().get("dev-1").unwrap().conn_id();

    // The rotation, file by file, as an agent does it: the gateway's
    // certificate from the new CA, the client CAs old and new (overlap);
    // the instance's certificate from the new CA, trusting it.
    let server = new_ca.server(&["127.0.0.1", "localhost"]);
    replace_file(&gateway_files.key, &server.key_pem);
    replace_file(&gateway_files.cert, &server.cert_pem);
    replace_file(&gateway_files.client_ca, &bundle(&[&old_ca, &new_ca]));
    let renewed = new_ca.instance("dev", "dev-1");
    replace_file(&instance_key, &renewed.key_pem);
    replace_file(&instance_cert, &renewed.cert_pem);
    replace_file(&instance_ca, &new_ca.pem);

    // New connections get the new server certificate, and the new client
    // CA admits the new certificates.
    let probe = new_ca.instance("dev", "probe-1");
    let probed = hello(Dial::tls(gw.addr, &new_ca, &probe), "probe-1", "dev").await;
    assert!(probed.is_ok(), "{:?}", probed.err());
    drop(probed);
    // The old certificate opens connections until it expires (its hello,
    // under another id, is refused for that), then none.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let code = hello_code(Dial::tls(gw.addr, &new_ca, &short), "dev-1-probe", "dev").await;
        if code != Code::Ok && code != Code::PermissionDenied {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired certificate still opens connections"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, body) = http::get(metrics, "/metrics").await;
    assert!(
        http::sample(&body, REFUSED, "port=\"grpc\",reason=\"certificate\"") >= 1.0,
        "{body}"
    );
    // The stream registered with it is still up: TLS checked the
    // certificate when the connection opened, and nothing closes it.
    assert_eq!(
        gw.gateway.instances().get("dev-1").map(|p| p.conn_id()),
        Some(first)
    );
    // Made to dial again, the instance uses its new files.
    gw.gateway
        .instances()
        .get("dev-1")
        .unwrap()
        .close(gatemesh_gateway::Disconnect::Shutdown {
            reconnect_after_ms: 0,
        });
    let redialed = gw
        .gateway
        .instances()
        .wait_until(|i| i.get("dev-1").is_some_and(|p| p.conn_id() != first));
    tokio::time::timeout(Duration::from_secs(30), redialed)
        .await
        .expect("the instance dials again with its new certificate and CA");
    drop(instance);
}
