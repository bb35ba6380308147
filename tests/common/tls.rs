//! Certificates made inside the test with rcgen: a CA, a gateway
//! certificate for 127.0.0.1, client certificates named after instances:
//! in the SPIFFE form (`spiffe://gatemesh/env/<env>/instance/<id>`, the
//! form the gateway binds an environment to) or the older DNS-SAN form.

use gatemesh_gateway::GatewayTls;
use gatemesh_proto::pb;
use gatemesh_service::tls::{ClientIdentity, ClientTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::TestGateway;

/// The trust domain of the test certificates: the gateway's and the
/// instance's default (`GATEWAY_TLS_TRUST_DOMAIN`, `VPS_TLS_TRUST_DOMAIN`).
pub const TRUST_DOMAIN: &str = "gatemesh";

/// The SPIFFE ID of instance `id` of `env` in [`TRUST_DOMAIN`].
pub fn spiffe_id(env: &str, id: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/env/{env}/instance/{id}")
}

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

    /// An instance's certificate in the SPIFFE form: its URI SAN is
    /// [`spiffe_id`]`(env, id)`. It carries `id` as a DNS SAN too, as many
    /// issuers add one, and what a gateway reading only DNS SANs would
    /// take for the instance's name.
    pub fn instance(&self, env: &str, id: &str) -> Issued {
        self.with_uri(&spiffe_id(env, id), Some(id), None)
    }

    /// [`Ca::instance`] valid only until `not_after`: a short-lived
    /// certificate of the kind SPIRE or an ACME-style rotation issues.
    pub fn instance_until(&self, env: &str, id: &str, not_after: std::time::SystemTime) -> Issued {
        self.with_uri(&spiffe_id(env, id), Some(id), Some(not_after))
    }

    /// A client certificate whose URI SAN is `uri` (and DNS SAN `dns`).
    pub fn with_uri(
        &self,
        uri: &str,
        dns: Option<&str>,
        not_after: Option<std::time::SystemTime>,
    ) -> Issued {
        let mut params =
            CertificateParams::new(dns.map(str::to_string).into_iter().collect::<Vec<_>>())
                .unwrap();
        params
            .subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        params
            .distinguished_name
            .push(DnType::CommonName, "ignored-when-a-san-exists");
        if let Some(not_after) = not_after {
            params.not_before =
                (std::time::SystemTime::now() - std::time::Duration::from_secs(3600)).into();
            params.not_after = not_after.into();
        }
        self.issue(params, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate in the older form: its DNS SAN is `id`, no
    /// SPIFFE ID.
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
    GatewayTls::from_pem(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        client_ca.map(|c| c.pem.as_bytes()),
    )
    .unwrap()
}

/// The instance side: trust `ca`, present `identity` when given.
pub fn client_tls(ca: &Ca, identity: Option<&Issued>) -> ClientTls {
    ClientTls::from_pem(
        Some(ca.pem.clone().into_bytes()),
        identity.map(Issued::identity),
    )
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

/// Replaces `path` with `content` the way a rotating agent does: written
/// beside it, then renamed over it, so a reader sees the old file or the
/// new one, never half of one.
pub fn replace_file(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

impl Ca {
    /// Writes the CA certificate to `dir/<name>.crt`; returns its path.
    pub fn write(&self, dir: &std::path::Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, &self.pem).unwrap();
        path
    }
}
