//! Certificates made inside the test with rcgen: a CA, a gateway
//! certificate for 127.0.0.1, client certificates named after instances.

use gatemesh_gateway::GatewayTls;
use gatemesh_proto::pb;
use gatemesh_service::tls::{ClientIdentity, ClientTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::TestGateway;

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    pub fn identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.cert_pem.clone().into_bytes(),
            key_pem: self.key_pem.clone().into_bytes(),
        }
    }
}

pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    fn issue(&self, mut params: CertificateParams, usage: ExtendedKeyUsagePurpose) -> Issued {
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        self.issue(params, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate whose DNS SAN is `id`.
    pub fn client(&self, id: &str) -> Issued {
        let mut params = CertificateParams::new(vec![id.to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "ignored-when-a-san-exists");
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate with no SAN, named by its common name.
    pub fn client_cn_only(&self, cn: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate for `id` that expired years ago.
    pub fn expired_client(&self, id: &str) -> Issued {
        let mut params = CertificateParams::new(vec![id.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// The gateway side: a certificate for 127.0.0.1 from `ca`, and mTLS with
/// `client_ca` when given.
pub fn gateway_tls(ca: &Ca, client_ca: Option<&Ca>) -> GatewayTls {
    let server = ca.server(&["127.0.0.1", "localhost"]);
    GatewayTls {
        cert_pem: server.cert_pem.into_bytes(),
        key_pem: server.key_pem.into_bytes(),
        client_ca_pem: client_ca.map(|c| c.pem.clone().into_bytes()),
    }
}

/// The instance side: trust `ca`, present `identity` when given.
pub fn client_tls(ca: &Ca, identity: Option<&Issued>) -> ClientTls {
    ClientTls {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity: identity.map(Issued::identity),
        domain: None,
    }
}

pub fn https_url(gw: &TestGateway) -> String {
    format!("https://{}", gw.addr)
}

/// Opens RegisterGateway over TLS as `id`, with `secret` when given, and
/// returns the gateway's answer to the handshake.
pub async fn tls_register(
    gw: &TestGateway,
    ca: &Ca,
    identity: Option<&Issued>,
    id: &str,
    secret: Option<&str>,
) -> Result<tonic::Streaming<pb::GatewayMessage>, tonic::Status> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    }
    let channel = Endpoint::from_shared(https_url(gw))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let mut client = pb::gateway_client::GatewayClient::new(channel);
    let hello = pb::InstanceMessage {
        kind: Some(pb::instance_message::Kind::Hello(pb::Hello {
            instance_id: id.into(),
            environment: "prod".into(),
            version: "tls-test".into(),
            methods: vec!["FindVPSByLease".into()],
            protocol_version: gatemesh_proto::PROTOCOL_VERSION,
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::StreamExt::chain(
        tokio_stream::iter([hello]),
        tokio_stream::pending(),
    ));
    if let Some(secret) = secret {
        request
            .metadata_mut()
            .insert(gatemesh_proto::SECRET_METADATA_KEY, secret.parse().unwrap());
    }
    let mut inbound = client.register_gateway(request).await?.into_inner();
    // The welcome (or the refusal) is the first thing on the stream.
    match inbound.message().await? {
        Some(pb::GatewayMessage {
            kind: Some(pb::gateway_message::Kind::Welcome(_)),
        }) => Ok(inbound),
        other => Err(tonic::Status::internal(format!(
            "expected welcome, got {other:?}"
        ))),
    }
}

/// PEM files on disk, for real processes (`vps-gateway`, `vps-service`,
/// `gatemesh`) that read certificates from paths.
impl Issued {
    /// Writes `<name>.crt` and `<name>.key` into `dir`; returns their paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl Ca {
    /// Writes the CA certificate to `dir/<name>.crt`; returns its path.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}
