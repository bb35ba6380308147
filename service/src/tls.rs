//! TLS towards `https://` gateways: which CA vouches for the gateway, and
//! the client certificate an mTLS gateway asks for.

use std::fmt;

use gatemesh_runtime::{ConfigError, pem};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ServiceConfig;

/// PEM material for `https://` links, in memory.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// CA certificates that sign the gateway's certificate; the system's
    /// roots when unset.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its key, for mTLS gateways. Its
    /// identity (first DNS SAN, else CN) must be the instance id.
    pub identity: Option<ClientIdentity>,
    /// The name the gateway's certificate must carry; the URL's host when
    /// unset.
    pub domain: Option<String>,
}

#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "ca",
                &self.ca_pem.as_ref().map_or("system roots", |_| "given"),
            )
            .field("client_cert", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("***"))
            .finish()
    }
}

impl ClientTls {
    /// Reads and checks the files named by `VPS_TLS_*`. A certificate
    /// without its key (or the reverse) names what is missing.
    pub(crate) fn from_config(config: &ServiceConfig) -> Result<Self, ConfigError> {
        let identity = pem::key_pair(
            ("VPS_TLS_CERT", config.tls_cert.as_deref()),
            ("VPS_TLS_KEY", config.tls_key.as_deref()),
        )?
        .map(|pair| ClientIdentity {
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
        });
        let tls = Self {
            ca_pem: config
                .tls_ca
                .as_deref()
                .map(|ca| pem::certificates("VPS_TLS_CA", ca))
                .transpose()?,
            identity,
            domain: None,
        };
        let given = tls.ca_pem.is_some() || tls.identity.is_some();
        let any_https = config
            .gateway_urls()
            .iter()
            .any(|url| url.starts_with("https://"));
        if given && !any_https {
            return Err(ConfigError(
                "VPS_GATEWAY_URL: VPS_TLS_* settings are given, so expected https:// URLs".into(),
            ));
        }
        Ok(tls)
    }

    /// The tonic TLS settings of one `https://` link.
    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &self.identity {
            config = config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}
