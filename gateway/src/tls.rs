//! TLS for the gRPC port: the server identity, and with a client CA, mTLS
//! in which the instance id in hello must be the certificate's identity.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use gatemesh_runtime::{ConfigError, pem};
use tonic::Status;
use tonic::transport::server::ServerTlsConfig;
use tonic::transport::{Certificate, CertificateDer, Identity, Server};
use x509_parser::extensions::GeneralName;

/// A client that opens a connection and never finishes the handshake must
/// not hold a slot for ever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// PEM material for the gRPC port, in memory.
#[derive(Clone)]
pub struct GatewayTls {
    /// The server's certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Set: mTLS. Only client certificates signed by these CAs are
    /// accepted, and each instance id must match its certificate.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("***"))
            .field("mtls", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl GatewayTls {
    /// Reads and checks the files named by `GATEWAY_TLS_CERT`,
    /// `GATEWAY_TLS_KEY` and `GATEWAY_TLS_CLIENT_CA`; `None` when TLS is
    /// off. A half-given setting names what is missing.
    pub(crate) fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(pem::KeyPair { cert_pem, key_pem }) =
            pem::key_pair(("GATEWAY_TLS_CERT", cert), ("GATEWAY_TLS_KEY", key))?
        else {
            if client_ca.is_some() {
                return Err(ConfigError(
                    "GATEWAY_TLS_CLIENT_CA: mTLS needs GATEWAY_TLS_CERT and GATEWAY_TLS_KEY too"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let tls = Self {
            cert_pem,
            key_pem,
            client_ca_pem: client_ca
                .map(|ca| pem::certificates("GATEWAY_TLS_CLIENT_CA", ca))
                .transpose()?,
        };
        // rustls checks that the key belongs to the certificate.
        tls.server_config_checked().map_err(|e| {
            ConfigError(format!(
                "GATEWAY_TLS_CERT, GATEWAY_TLS_KEY: not a usable TLS identity \
                     (is the key the certificate's?): {e}"
            ))
        })?;
        Ok(Some(tls))
    }

    pub fn is_mtls(&self) -> bool {
        self.client_ca_pem.is_some()
    }

    fn server_config(&self) -> ServerTlsConfig {
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca_pem {
            config = config.client_ca_root(Certificate::from_pem(ca));
        }
        config
    }

    fn server_config_checked(&self) -> Result<(), String> {
        Server::builder()
            .tls_config(self.server_config())
            .map(drop)
            .map_err(|e| gatemesh_runtime::error_chain(&e))
    }
}

/// Puts TLS on `builder` when there is one; warns when there is not.
pub(crate) fn apply(builder: Server, tls: Option<&GatewayTls>) -> anyhow::Result<Server> {
    match tls {
        None => {
            tracing::warn!(
                "serving cleartext: development only (set GATEWAY_TLS_CERT and GATEWAY_TLS_KEY)"
            );
            Ok(builder)
        }
        Some(tls) => {
            tracing::info!(mtls = tls.is_mtls(), "serving TLS");
            builder
                .tls_config(tls.server_config())
                .map_err(|e| anyhow::anyhow!("TLS settings: {}", gatemesh_runtime::error_chain(&e)))
        }
    }
}

/// The identity a client certificate vouches for: its first DNS subject
/// alternative name, or its common name when it has no DNS name.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let first_dns = san.value.general_names.iter().find_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        });
        if first_dns.is_some() {
            return first_dns;
        }
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Under mTLS, refuses a stream whose hello names another instance than
/// the client certificate does.
pub(crate) fn check_identity(
    peer_certs: Option<&Vec<CertificateDer<'static>>>,
    instance_id: &str,
) -> Result<(), Status> {
    let leaf = peer_certs
        .and_then(|certs| certs.first())
        .ok_or_else(|| Status::permission_denied("no client certificate"))?;
    match certificate_identity(leaf) {
        Some(identity) if identity == instance_id => Ok(()),
        Some(identity) => Err(Status::permission_denied(format!(
            "instance id {instance_id:?} does not match the client certificate's identity {identity:?}"
        ))),
        None => Err(Status::permission_denied(
            "the client certificate names no DNS SAN and no common name",
        )),
    }
}

/// Whether `request` came over a connection with a verified client
/// certificate (only mTLS connections have one).
pub(crate) fn has_client_cert<T>(request: &tonic::Request<T>) -> bool {
    request.peer_certs().is_some_and(|certs| !certs.is_empty())
}
