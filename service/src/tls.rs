//! TLS towards `https://` gateways: which CA vouches for the gateway, and
//! the client certificate an mTLS gateway asks for.
//!
//! Read from `VPS_TLS_CA`, `VPS_TLS_CERT` and `VPS_TLS_KEY`, the files are
//! read again when one of them changes, at the latest at each dial
//! ([`Reloading`]): a rotated certificate is used from the next
//! connection on, and the stream up now keeps its own. At start, and at
//! each reload, the certificate must name this instance: its SPIFFE ID
//! `spiffe://<VPS_TLS_TRUST_DOMAIN>/env/<VPS_ENVIRONMENT>/instance/<VPS_INSTANCE_ID>`,
//! or in the older form its DNS SAN (else common name) the instance id.
//! A mismatch stops the binary at start; at a reload it keeps the
//! previous files, and says so.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use gatemesh_runtime::identity::{SpiffeId, leaf_name};
use gatemesh_runtime::reload::Reloading;
use gatemesh_runtime::{ConfigError, pem};
use parking_lot::Mutex;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::ServiceConfig;

/// TLS for `https://` links: the system's roots, or material read from
/// PEM (fixed, or from files reloaded as they change). Cheap to clone.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// `None`: the system's roots, no client certificate.
    material: Option<Arc<Mutex<Reloading<Material>>>>,
    /// The name the gateway's certificate must carry; the URL's host when
    /// unset.
    pub domain: Option<String>,
}

/// PEM material for `https://` links, in memory.
#[derive(Clone, Default)]
pub struct Material {
    /// CA certificates that sign the gateway's certificate; the system's
    /// roots when unset.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its key, for mTLS gateways.
    pub identity: Option<ClientIdentity>,
}

#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let material = self.material.as_ref().map(|m| m.lock().last());
        f.debug_struct("ClientTls")
            .field(
                "ca",
                &material
                    .as_ref()
                    .and_then(|m| m.ca_pem.as_ref())
                    .map_or("system roots", |_| "given"),
            )
            .field(
                "client_cert",
                &material.as_ref().is_some_and(|m| m.identity.is_some()),
            )
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

/// Who the instance is, which its certificate must name.
#[derive(Clone)]
struct Expected {
    trust_domain: String,
    environment: String,
    id: String,
}

impl Expected {
    /// `VPS_TLS_CERT` names this instance, or an error that says what it
    /// names instead.
    fn check(&self, cert_pem: &[u8]) -> Result<(), ConfigError> {
        let name = leaf_name(cert_pem).map_err(|e| ConfigError(format!("VPS_TLS_CERT: {e}")))?;
        if name.names_instance(&self.trust_domain, &self.environment, &self.id) {
            return Ok(());
        }
        let wanted = SpiffeId::instance(&self.trust_domain, &self.environment, &self.id)
            .map_or_else(
                || {
                    format!(
                        "instance {:?} of environment {:?}",
                        self.id, self.environment
                    )
                },
                |id| id.to_string(),
            );
        Err(ConfigError(format!(
            "VPS_TLS_CERT: the certificate names {name}, not this instance ({wanted}: \
             VPS_INSTANCE_ID, VPS_ENVIRONMENT, VPS_TLS_TRUST_DOMAIN)"
        )))
    }
}

/// Where the files are.
struct Files {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    expected: Expected,
}

impl Files {
    fn load(&self) -> Result<Material, ConfigError> {
        let identity = pem::key_pair(
            ("VPS_TLS_CERT", self.cert.as_deref()),
            ("VPS_TLS_KEY", self.key.as_deref()),
        )?
        .map(|pair| ClientIdentity {
            cert_pem: pair.cert_pem,
            key_pem: pair.key_pem,
        });
        if let Some(identity) = &identity {
            self.expected.check(&identity.cert_pem)?;
        }
        Ok(Material {
            ca_pem: self
                .ca
                .as_deref()
                .map(|ca| pem::certificates("VPS_TLS_CA", ca))
                .transpose()?,
            identity,
        })
    }
}

impl ClientTls {
    /// From PEM in memory (embedding, tests): fixed, never reloaded, and
    /// not checked against the instance's id (the gateway still is).
    pub fn from_pem(ca_pem: Option<Vec<u8>>, identity: Option<ClientIdentity>) -> Self {
        Self {
            material: Some(Arc::new(Mutex::new(Reloading::fixed(
                "TLS",
                Material { ca_pem, identity },
            )))),
            domain: None,
        }
    }

    /// Reads and checks the files named by `VPS_TLS_*`: a certificate
    /// without its key (or the reverse) names what is missing, and a
    /// certificate that names another instance stops the instance.
    pub(crate) fn from_config(config: &ServiceConfig) -> Result<Self, ConfigError> {
        let given =
            config.tls_ca.is_some() || config.tls_cert.is_some() || config.tls_key.is_some();
        let any_https = config
            .gateway_urls()
            .iter()
            .any(|url| url.starts_with("https://"));
        if !given {
            return Ok(Self::default());
        }
        let files = Files {
            ca: config.tls_ca.clone(),
            cert: config.tls_cert.clone(),
            key: config.tls_key.clone(),
            expected: Expected {
                trust_domain: config.tls_trust_domain.clone(),
                environment: config.environment.clone(),
                id: config.instance_id(),
            },
        };
        let paths = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let material = Reloading::new("the TLS files (VPS_TLS_*)", paths, move || files.load())?;
        if !any_https {
            return Err(ConfigError(
                "VPS_GATEWAY_URL: VPS_TLS_* settings are given, so expected https:// URLs".into(),
            ));
        }
        Ok(Self {
            material: Some(Arc::new(Mutex::new(material))),
            domain: None,
        })
    }

    /// Whether a CA of its own (rather than the system's roots) verifies
    /// gateways.
    pub fn has_ca(&self) -> bool {
        self.material
            .as_ref()
            .is_some_and(|m| m.lock().last().ca_pem.is_some())
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.material
            .as_ref()
            .is_some_and(|m| m.lock().last().identity.is_some())
    }

    /// Why the files as they are now do not load (the previous ones stay
    /// in use).
    pub fn problem(&self) -> Option<String> {
        self.material
            .as_ref()
            .and_then(|m| m.lock().problem().map(str::to_string))
    }

    /// The tonic TLS settings of one dial, the files read again first when
    /// they changed.
    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        let material = self.material.as_ref().map(|m| m.lock().current());
        let mut config = ClientTlsConfig::new();
        let material = material.as_deref().cloned().unwrap_or_default();
        config = match &material.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some(identity) = &material.identity {
            config = config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
        }
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        config
    }
}
