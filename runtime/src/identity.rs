//! Who a certificate names, read the same way by both ends: the gateway
//! binds a hello to it, and an instance checks at start that its own
//! certificate names it.
//!
//! The mesh's form is a SPIFFE ID in a URI subject alternative name
//! ([`SpiffeId`]): `spiffe://<trust domain>/env/<environment>/instance/<id>`
//! for an instance, so the certificate proves the environment as well as
//! the id. Callers of the admin API may hold `.../env/<environment>/operator/<name>`
//! (one environment) or `spiffe://<trust domain>/operator/<name>` (all).
//! The older form ([`CertName::Legacy`]) names only an instance id: the
//! first DNS SAN, else the common name.
//!
//! SPIFFE allows only letters, digits, `.`, `-` and `_` in a path
//! segment; the mesh's ids may also hold `:`, `@` and `/` (an id is the
//! rest of the path, slashes included), which this parser accepts so that
//! every valid id has a certificate form, but which a SPIFFE issuer such
//! as SPIRE will not put in an SVID.

use std::fmt;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use crate::ConfigError;
use crate::env::is_label;

/// The trust domain when `GATEWAY_TLS_TRUST_DOMAIN` / `VPS_TLS_TRUST_DOMAIN`
/// is unset.
pub const DEFAULT_TRUST_DOMAIN: &str = "gatemesh";
/// The longest instance id (and operator name).
pub const MAX_ID_LEN: usize = 128;
/// The longest environment label.
pub const MAX_ENVIRONMENT_LEN: usize = 64;
/// The longest trust domain (SPIFFE's limit).
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A SPIFFE ID of the mesh, parsed and checked: it cannot hold a bad
/// trust domain, environment or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    trust_domain: String,
    environment: Option<String>,
    subject: Subject,
}

/// Whom a [`SpiffeId`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An instance, by its id (`VPS_INSTANCE_ID`).
    Instance(String),
    /// A caller of the admin API, by a name for the logs.
    Operator(String),
}

/// Why a URI is not a SPIFFE ID of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeError {
    #[error("{0:?} is not a spiffe:// URI")]
    NotSpiffe(String),
    #[error(
        "{0:?}: the trust domain must be 1 to 255 characters of lowercase letters, digits, \
         `.`, `-` and `_`"
    )]
    TrustDomain(String),
    #[error(
        "{0:?}: expected spiffe://<trust domain>/env/<environment>/instance/<id>, \
         .../env/<environment>/operator/<name> or spiffe://<trust domain>/operator/<name>"
    )]
    Path(String),
}

fn is_trust_domain(s: &str) -> bool {
    (1..=MAX_TRUST_DOMAIN_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// An environment fits one path segment; an id is the rest of the path,
/// each of its segments non-empty and not `.` or `..`.
fn is_environment(s: &str) -> bool {
    is_label(s, MAX_ENVIRONMENT_LEN) && !s.contains('/')
}

fn is_id(s: &str) -> bool {
    is_label(s, MAX_ID_LEN)
        && s.split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

impl SpiffeId {
    /// The ID of instance `id` of `environment`, as its certificate should
    /// name it. `None` when a part cannot be put in one.
    pub fn instance(trust_domain: &str, environment: &str, id: &str) -> Option<Self> {
        (is_trust_domain(trust_domain) && is_environment(environment) && is_id(id)).then(|| Self {
            trust_domain: trust_domain.into(),
            environment: Some(environment.into()),
            subject: Subject::Instance(id.into()),
        })
    }

    pub fn parse(uri: &str) -> Result<Self, SpiffeError> {
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeError::NotSpiffe(uri.into()))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| SpiffeError::Path(uri.into()))?;
        if !is_trust_domain(trust_domain) {
            return Err(SpiffeError::TrustDomain(uri.into()));
        }
        let bad_path = || SpiffeError::Path(uri.into());
        let (environment, subject) = match path.split_once('/') {
            Some(("env", rest)) => {
                let (environment, rest) = rest.split_once('/').ok_or_else(bad_path)?;
                if !is_environment(environment) {
                    return Err(bad_path());
                }
                let subject = match rest.split_once('/') {
                    Some(("instance", id)) if is_id(id) => Subject::Instance(id.into()),
                    Some(("operator", name)) if is_id(name) => Subject::Operator(name.into()),
                    _ => return Err(bad_path()),
                };
                (Some(environment.to_string()), subject)
            }
            Some(("operator", name)) if is_id(name) => (None, Subject::Operator(name.into())),
            _ => return Err(bad_path()),
        };
        Ok(Self {
            trust_domain: trust_domain.into(),
            environment,
            subject,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The one environment it is confined to; `None` for an operator of
    /// every environment.
    pub fn environment(&self) -> Option<&str> {
        self.environment.as_deref()
    }

    pub fn subject(&self) -> &Subject {
        &self.subject
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.trust_domain)?;
        if let Some(environment) = &self.environment {
            write!(f, "/env/{environment}")?;
        }
        match &self.subject {
            Subject::Instance(id) => write!(f, "/instance/{id}"),
            Subject::Operator(name) => write!(f, "/operator/{name}"),
        }
    }
}

/// What a certificate names, as the mesh reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    /// Its SPIFFE ID (its one `spiffe://` URI SAN).
    Spiffe(SpiffeId),
    /// No SPIFFE ID: its first DNS SAN, else its common name. It names an
    /// instance id and no environment.
    Legacy(String),
}

/// Why no name could be read from a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertNameError {
    #[error("not a DER X.509 certificate")]
    Unparsable,
    #[error("more than one spiffe:// URI SAN (an X.509-SVID has exactly one)")]
    SeveralSpiffeIds,
    #[error(transparent)]
    Spiffe(#[from] SpiffeError),
    #[error("no SPIFFE ID, no DNS SAN and no common name")]
    Nameless,
}

impl CertName {
    /// Whether it names instance `id` of `environment` in `trust_domain`.
    /// The older form names an id only: it says nothing of the rest.
    pub fn names_instance(&self, trust_domain: &str, environment: &str, id: &str) -> bool {
        match self {
            CertName::Spiffe(spiffe) => {
                spiffe.trust_domain == trust_domain
                    && spiffe.environment.as_deref() == Some(environment)
                    && spiffe.subject == Subject::Instance(id.into())
            }
            CertName::Legacy(name) => name == id,
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::Spiffe(spiffe) => spiffe.fmt(f),
            CertName::Legacy(name) => {
                write!(f, "{name:?} (a DNS SAN or common name, no SPIFFE ID)")
            }
        }
    }
}

/// The name of the certificate `der`. Never panics, whatever the bytes
/// (a client chooses them; `fuzz/` runs this on arbitrary input).
pub fn certificate_name(der: &[u8]) -> Result<CertName, CertNameError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| CertNameError::Unparsable)?;
    let mut first_dns = None;
    let mut spiffe = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                    if spiffe.is_some() {
                        return Err(CertNameError::SeveralSpiffeIds);
                    }
                    spiffe = Some(*uri);
                }
                GeneralName::DNSName(dns) if first_dns.is_none() => first_dns = Some(*dns),
                _ => {}
            }
        }
    }
    if let Some(uri) = spiffe {
        return Ok(CertName::Spiffe(SpiffeId::parse(uri)?));
    }
    if let Some(dns) = first_dns {
        return Ok(CertName::Legacy(dns.to_string()));
    }
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(|cn| CertName::Legacy(cn.to_string()))
        .ok_or(CertNameError::Nameless)
}

/// The name of the first certificate of a PEM chain (the leaf).
pub fn leaf_name(pem: &[u8]) -> Result<CertName, CertNameError> {
    let leaf = CertificateDer::pem_slice_iter(pem)
        .next()
        .and_then(Result::ok)
        .ok_or(CertNameError::Unparsable)?;
    certificate_name(&leaf)
}

/// Checks a trust domain setting (`GATEWAY_TLS_TRUST_DOMAIN`,
/// `VPS_TLS_TRUST_DOMAIN`).
pub fn check_trust_domain(var: &str, value: &str) -> Result<(), ConfigError> {
    crate::env::ensure(
        is_trust_domain(value),
        var,
        &format!(
            "a SPIFFE trust domain: 1 to 255 characters of lowercase letters, digits, `.`, `-` \
             and `_`, got {value:?}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_of_the_mesh_parse_and_print_back() {
        for uri in [
            "spiffe://gatemesh/env/prod/instance/prod-1",
            "spiffe://example.org/env/beta/instance/node-1/vps-service@beta:2",
            "spiffe://gatemesh/env/dev/operator/alice",
            "spiffe://gatemesh/operator/ops",
        ] {
            let id = SpiffeId::parse(uri).unwrap();
            assert_eq!(id.to_string(), uri);
        }
        let id = SpiffeId::parse("spiffe://gatemesh/env/prod/instance/prod-1").unwrap();
        assert_eq!(
            (id.trust_domain(), id.environment(), id.subject()),
            (
                "gatemesh",
                Some("prod"),
                &Subject::Instance("prod-1".into())
            )
        );
        assert_eq!(
            SpiffeId::instance("gatemesh", "prod", "prod-1"),
            Some(id),
            "the same, made"
        );
        assert_eq!(SpiffeId::instance("Gatemesh", "prod", "prod-1"), None);
        assert_eq!(SpiffeId::instance("gatemesh", "a/b", "prod-1"), None);
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (uri, what) in [
            ("https://gatemesh/env/prod/instance/p", "not spiffe"),
            ("spiffe://gatemesh", "no path"),
            ("spiffe://GateMesh/env/prod/instance/p", "trust domain case"),
            ("spiffe:///env/prod/instance/p", "empty trust domain"),
            ("spiffe://gatemesh/env/prod", "no subject"),
            ("spiffe://gatemesh/env/prod/instance/", "empty id"),
            ("spiffe://gatemesh/env//instance/p", "empty environment"),
            ("spiffe://gatemesh/env/prod/instance/a//b", "empty segment"),
            ("spiffe://gatemesh/env/prod/instance/a/../b", "dot segment"),
            ("spiffe://gatemesh/env/prod/instance/p%20q", "percent"),
            ("spiffe://gatemesh/env/prod/instance/p?q", "query"),
            ("spiffe://gatemesh/env/prod/workload/p", "unknown kind"),
            ("spiffe://gatemesh/ns/default/sa/p", "kubernetes form"),
            (
                "spiffe://gatemesh/instance/p",
                "instance without environment",
            ),
        ] {
            assert!(SpiffeId::parse(uri).is_err(), "{what}: {uri}");
        }
        let long = format!("spiffe://gatemesh/env/prod/instance/{}", "x".repeat(129));
        assert!(SpiffeId::parse(&long).is_err());
        assert!(check_trust_domain("X", "gatemesh").is_ok());
        let e = check_trust_domain("X", "Gate Mesh").unwrap_err();
        assert!(e.0.starts_with("X: expected a SPIFFE trust domain"), "{e}");
    }

    #[test]
    fn names_instance_compares_every_part_of_a_spiffe_id_and_the_id_of_the_old_form() {
        let spiffe = CertName::Spiffe(SpiffeId::instance("gatemesh", "dev", "dev-1").unwrap());
        assert!(spiffe.names_instance("gatemesh", "dev", "dev-1"));
        assert!(!spiffe.names_instance("gatemesh", "prod", "dev-1"));
        assert!(!spiffe.names_instance("gatemesh", "dev", "dev-2"));
        assert!(!spiffe.names_instance("elsewhere", "dev", "dev-1"));
        let operator =
            CertName::Spiffe(SpiffeId::parse("spiffe://gatemesh/operator/dev-1").unwrap());
        assert!(!operator.names_instance("gatemesh", "dev", "dev-1"));
        let legacy = CertName::Legacy("dev-1".into());
        assert!(legacy.names_instance("anything", "any", "dev-1"));
        assert!(!legacy.names_instance("anything", "any", "dev-2"));
    }

    fn certificate(sans: Vec<rcgen::SanType>, cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn a_certificate_names_its_spiffe_id_else_its_dns_san_else_its_common_name() {
        let spiffe = "spiffe://gatemesh/env/dev/instance/dev-1";
        let both = certificate(vec![dns("other"), uri(spiffe)], Some("cn"));
        assert_eq!(
            certificate_name(&both).unwrap(),
            CertName::Spiffe(SpiffeId::parse(spiffe).unwrap()),
            "the SPIFFE ID wins over the DNS SAN"
        );
        let web = certificate(vec![uri("https://example.org/x"), dns("dev-1")], None);
        assert_eq!(
            certificate_name(&web).unwrap(),
            CertName::Legacy("dev-1".into())
        );
        let cn = certificate(vec![], Some("dev-2"));
        assert_eq!(
            certificate_name(&cn).unwrap(),
            CertName::Legacy("dev-2".into())
        );
        let two = certificate(vec![uri(spiffe), uri("spiffe://gatemesh/operator/x")], None);
        assert_eq!(certificate_name(&two), Err(CertNameError::SeveralSpiffeIds));
        let bad = certificate(vec![uri("spiffe://gatemesh/ns/x/sa/y"), dns("dev-1")], None);
        assert!(matches!(
            certificate_name(&bad),
            Err(CertNameError::Spiffe(SpiffeError::Path(_)))
        ));
        assert_eq!(
            certificate_name(&certificate(vec![], None)),
            Err(CertNameError::Nameless)
        );
    }

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(certificate_name(b""), Err(CertNameError::Unparsable));
        assert_eq!(
            certificate_name(&[0x30, 0x82, 0xff]),
            Err(CertNameError::Unparsable)
        );
        assert_eq!(leaf_name(b"not pem"), Err(CertNameError::Unparsable));
    }
}
