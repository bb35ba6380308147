//! What a peer's credentials prove, and the one place each is checked.
//!
//! - **Secrets.** `GATEWAY_API_SECRET` may name any environment.
//!   `GATEWAY_API_SECRETS_FILE` holds instance secrets and
//!   `GATEWAY_CALLER_SECRETS_FILE` caller secrets (the admin API, HTTP
//!   `/instances`), one `<environments> <secret>` a line, `<environments>`
//!   a comma-separated list or `*` ([`read_secrets_file`]). A presented
//!   secret is matched in [`Credentials::secret`], whichever header it
//!   came in, into a [`Grant`]: the [`Scope`] of environments it may name.
//! - **Certificates** (mTLS). A client certificate names an instance and
//!   its environment by its SPIFFE ID; one without (the older DNS-SAN
//!   form) is accepted only for the environments
//!   `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS` lists.
//!
//! An instance's identity is established once, at its hello
//! ([`Credentials::bind_hello`]): the id and environment the hello names
//! must be the ones the certificate names and within the secret's scope,
//! and the [`Caller`] that results (with its [`Proof`]) is what every
//! feature reads from then on. A caller of the admin API is a
//! [`Principal`]: the environments its calls may reach.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use gatemesh_handlers::{Caller, Proof};
use gatemesh_proto::pb;
use gatemesh_runtime::env::{check_secret, is_label};
use gatemesh_runtime::identity::{
    CertName, MAX_ENVIRONMENT_LEN, SpiffeId, Subject, certificate_name,
};
use gatemesh_runtime::{ConfigError, Secret};
use tonic::transport::CertificateDer;

use crate::GatewayConfig;
use crate::refusal::Refusal;

/// The environments a credential may name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every environment.
    #[default]
    Any,
    /// These, sorted, no duplicates; never empty.
    Only(Arc<[Arc<str>]>),
}

impl Scope {
    /// The scope of `environments` (any order, duplicates allowed).
    pub fn only<S: AsRef<str>>(environments: impl IntoIterator<Item = S>) -> Self {
        let mut list: Vec<Arc<str>> = environments
            .into_iter()
            .map(|e| Arc::from(e.as_ref()))
            .collect();
        list.sort();
        list.dedup();
        Self::Only(list.into())
    }

    pub fn allows(&self, environment: &str) -> bool {
        match self {
            Scope::Any => true,
            Scope::Only(list) => list.iter().any(|e| &**e == environment),
        }
    }

    /// Its environments; `None` for every one.
    pub fn environments(&self) -> Option<&[Arc<str>]> {
        match self {
            Scope::Any => None,
            Scope::Only(list) => Some(list),
        }
    }

    /// `*`, or a comma-separated list of environment labels.
    fn parse(field: &str) -> Result<Self, String> {
        if field == "*" {
            return Ok(Scope::Any);
        }
        let labels: Vec<&str> = field.split(',').collect();
        if let Some(bad) = labels
            .iter()
            .find(|l| !is_label(l, MAX_ENVIRONMENT_LEN) || l.contains('/'))
        {
            return Err(format!(
                "environment {bad:?}: expected `*` or comma-separated environments of 1 to \
                 {MAX_ENVIRONMENT_LEN} bytes of letters, digits and . _ - : @"
            ));
        }
        Ok(Self::only(labels))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Any => f.write_str("*"),
            Scope::Only(list) => f.write_str(&list.join(",")),
        }
    }
}

/// One line of a secrets file: a secret and the environments it may
/// name. `Debug` masks the secret.
#[derive(Debug, Clone)]
pub struct ScopedSecret {
    pub scope: Scope,
    pub secret: Secret,
}

/// Reads a secrets file named by `var`: one `<environments> <secret>` a
/// line, `<environments>` being `*` or a comma-separated list (`dev`,
/// `dev,beta`), then spaces or tabs, then the secret (printable ASCII, as
/// `GATEWAY_API_SECRET`; inner spaces allowed). Blank lines and lines
/// starting with `#` are skipped. A bad line is an error naming the file
/// and the line (never the secret); so is a secret given twice, and a file
/// with no secret at all.
pub fn read_secrets_file(var: &str, path: &Path) -> Result<Vec<ScopedSecret>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{var}: cannot read {}: {e}", path.display())))?;
    let at = |line: usize, what: String| {
        ConfigError(format!("{var}: {}:{line}: {what}", path.display()))
    };
    let mut secrets: Vec<(usize, ScopedSecret)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((scope, secret)) = line.split_once([' ', '\t']) else {
            return Err(at(
                n,
                "expected `<environments> <secret>` (e.g. `dev,beta s3cret`), found one field"
                    .into(),
            ));
        };
        let secret = secret.trim_matches([' ', '\t']);
        let scope = Scope::parse(scope).map_err(|e| at(n, e))?;
        check_secret("the secret", secret).map_err(|e| at(n, e.0))?;
        if let Some((first, _)) = secrets
            .iter()
            .find(|(_, s)| s.secret.matches(secret.as_bytes()))
        {
            return Err(at(
                n,
                format!("the same secret as line {first}: one secret, one set of environments"),
            ));
        }
        secrets.push((
            n,
            ScopedSecret {
                scope,
                secret: Secret::new(secret),
            },
        ));
    }
    if secrets.is_empty() {
        return Err(ConfigError(format!(
            "{var}: {}: no `<environments> <secret>` line",
            path.display()
        )));
    }
    Ok(secrets.into_iter().map(|(_, s)| s).collect())
}

/// Who presents a secret: instances and callers hold different ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An instance opening its stream (`GATEWAY_API_SECRETS_FILE`).
    Instance,
    /// A caller of the admin API or HTTP `/instances`
    /// (`GATEWAY_CALLER_SECRETS_FILE`).
    Caller,
}

/// What a matching secret proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub scope: Scope,
    pub proof: Proof,
}

/// A caller of the admin API (or HTTP `/instances`), as its credential
/// proved it: the environments its calls may reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub scope: Scope,
    pub proof: Proof,
}

impl Principal {
    /// Whom a call of a gateway-served method (e.g. `AllocateIP`) runs
    /// as: `admin` of no environment for a caller of every environment
    /// (as before), `admin` of its one environment for a caller confined
    /// to one. One confined to several must not act for all of them:
    /// refused.
    pub fn local_caller(&self) -> Result<Caller, Refusal> {
        match self.scope.environments() {
            None => Ok(Caller::new("admin", "", self.proof)),
            Some([one]) => Ok(Caller::new("admin", one.clone(), self.proof)),
            Some(_) => Err(Refusal::Environment(format!(
                "a caller confined to several environments ({}) cannot call the gateway's own \
                 methods: they would act for one; give it a secret of one environment",
                self.scope
            ))),
        }
    }
}

/// What a stream presented before its hello: the secret's grant, and the
/// client certificate's name under mTLS.
#[derive(Debug)]
pub struct Presented {
    grant: Option<Grant>,
    certificate: Option<CertName>,
}

/// Every credential the gateway accepts, and what each may name; built
/// once from the settings.
#[derive(Debug, Clone)]
pub struct Credentials {
    shared: Option<Secret>,
    instances: Vec<ScopedSecret>,
    callers: Vec<ScopedSecret>,
    /// Under mTLS: client certificates are checked (and present).
    mtls: bool,
    /// `GATEWAY_TLS_SECRET_OPTIONAL` under mTLS.
    certificate_suffices: bool,
    trust_domain: String,
    /// `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS`; `None`: such certificates refused.
    legacy: Option<Scope>,
}

impl Credentials {
    pub fn from_config(config: &GatewayConfig) -> Self {
        let mtls = config.tls.as_ref().is_some_and(crate::GatewayTls::is_mtls);
        Self {
            shared: config.api_secret.clone(),
            instances: config.instance_secrets.clone(),
            callers: config.caller_secrets.clone(),
            mtls,
            certificate_suffices: config.secret_optional_with_cert(),
            trust_domain: config.tls_trust_domain.clone(),
            legacy: config.dns_san_environments(),
        }
    }

    /// The one place a presented secret is matched, whichever way it came
    /// (the `x-gatemesh-secret` header, a bearer token): what it may
    /// name, or `None` when it is no secret of `role`. Every secret is
    /// compared, in constant time each, whatever matched first.
    pub fn secret(&self, presented: &[u8], role: Role) -> Option<Grant> {
        let scoped = match role {
            Role::Instance => &self.instances,
            Role::Caller => &self.callers,
        };
        let mut grant = None;
        if let Some(shared) = &self.shared
            && shared.matches(presented)
        {
            grant = Some(Grant {
                scope: Scope::Any,
                proof: Proof::SharedSecret,
            });
        }
        for line in scoped {
            if line.secret.matches(presented) && grant.is_none() {
                let proof = match line.scope {
                    Scope::Any => Proof::SharedSecret,
                    Scope::Only(_) => Proof::EnvironmentSecret,
                };
                grant = Some(Grant {
                    scope: line.scope.clone(),
                    proof,
                });
            }
        }
        grant
    }

    /// Whether a request carries a credential of any role: a secret
    /// that matches, or (under `GATEWAY_TLS_SECRET_OPTIONAL`) no secret
    /// and a verified client certificate. What lifts a connection's
    /// handshake deadline; each service still checks its own role.
    pub fn authenticates(&self, presented: Option<&[u8]>, has_certificate: bool) -> bool {
        match presented {
            Some(secret) => {
                self.secret(secret, Role::Instance).is_some()
                    || self.secret(secret, Role::Caller).is_some()
            }
            None => self.certificate_suffices && has_certificate,
        }
    }

    /// A stream's credentials, checked before its hello is read: its
    /// secret (or, where allowed, none), and its certificate's name.
    pub fn stream(
        &self,
        presented: Option<&[u8]>,
        certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Presented, Refusal> {
        let leaf = certificates.and_then(<[_]>::first);
        let certificate = match (self.mtls, leaf) {
            (false, _) => None,
            (true, None) => return Err(Refusal::Certificate("no client certificate".into())),
            (true, Some(leaf)) => Some(
                certificate_name(leaf)
                    .map_err(|e| Refusal::Certificate(format!("the client certificate: {e}")))?,
            ),
        };
        let grant = match presented {
            Some(secret) => Some(self.secret(secret, Role::Instance).ok_or(Refusal::Secret)?),
            None if self.certificate_suffices && certificate.is_some() => None,
            None => return Err(Refusal::NoCredential),
        };
        Ok(Presented { grant, certificate })
    }

    /// The instance's identity: the hello's id and environment, once the
    /// certificate names them and the secret may name the environment.
    /// Refusals are `PERMISSION_DENIED`, before anything is registered.
    pub fn bind_hello(&self, presented: &Presented, hello: &pb::Hello) -> Result<Caller, Refusal> {
        let (id, environment) = (&hello.instance_id, &hello.environment);
        let mut proof = None;
        if let Some(name) = &presented.certificate {
            proof = Some(self.certificate_names(name, id, environment)?);
        }
        if let Some(grant) = &presented.grant {
            if !grant.scope.allows(environment) {
                return Err(Refusal::Environment(format!(
                    "the secret presented may say hello only as {}, not as {environment:?}",
                    grant.scope
                )));
            }
            proof = proof.or(Some(grant.proof));
        }
        let proof = proof.ok_or(Refusal::NoCredential)?;
        Ok(Caller::new(id.as_str(), environment.as_str(), proof))
    }

    /// Whether the client certificate `name` is instance `id` of
    /// `environment`, and how it proves so.
    fn certificate_names(
        &self,
        name: &CertName,
        id: &str,
        environment: &str,
    ) -> Result<Proof, Refusal> {
        match name {
            CertName::Spiffe(spiffe) => {
                self.check_trust_domain(spiffe)?;
                if !matches!(spiffe.subject(), Subject::Instance(_)) {
                    return Err(Refusal::Certificate(format!(
                        "the client certificate {spiffe} names an operator, not an instance"
                    )));
                }
                if !name.names_instance(&self.trust_domain, environment, id) {
                    return Err(Refusal::Identity(format!(
                        "hello says instance {id:?} of environment {environment:?}, but the \
                         client certificate names {spiffe}"
                    )));
                }
                Ok(Proof::Spiffe)
            }
            CertName::Legacy(identity) => {
                let Some(allowed) = &self.legacy else {
                    return Err(Refusal::Certificate(format!(
                        "the client certificate names {identity:?} but carries no SPIFFE ID \
                         (spiffe://{}/env/<environment>/instance/<id>); certificates without \
                         one are accepted only for the environments \
                         GATEWAY_TLS_DNS_SAN_ENVIRONMENTS lists",
                        self.trust_domain
                    )));
                };
                if identity != id {
                    return Err(Refusal::Identity(format!(
                        "instance id {id:?} does not match the client certificate's identity \
                         {identity:?}"
                    )));
                }
                if !allowed.allows(environment) {
                    return Err(Refusal::Environment(format!(
                        "a client certificate without a SPIFFE ID may say hello only as {allowed} \
                         (GATEWAY_TLS_DNS_SAN_ENVIRONMENTS), not as {environment:?}"
                    )));
                }
                Ok(Proof::LegacyCertificate)
            }
        }
    }

    fn check_trust_domain(&self, spiffe: &SpiffeId) -> Result<(), Refusal> {
        if spiffe.trust_domain() == self.trust_domain {
            return Ok(());
        }
        Err(Refusal::Certificate(format!(
            "the client certificate {spiffe} is of trust domain {:?}, not {:?} \
             (GATEWAY_TLS_TRUST_DOMAIN)",
            spiffe.trust_domain(),
            self.trust_domain
        )))
    }

    /// A caller of the admin API or HTTP `/instances`: its caller secret,
    /// or (under `GATEWAY_TLS_SECRET_OPTIONAL`) with no secret its client
    /// certificate: a SPIFFE ID confines it to the environment it names
    /// (`spiffe://<td>/operator/<name>`: every one); one without, to the
    /// environments `GATEWAY_TLS_DNS_SAN_ENVIRONMENTS` lists.
    pub fn caller(
        &self,
        presented: Option<&[u8]>,
        certificates: Option<&[CertificateDer<'static>]>,
    ) -> Result<Principal, Refusal> {
        if let Some(secret) = presented {
            let grant = self.secret(secret, Role::Caller).ok_or(Refusal::Secret)?;
            return Ok(Principal {
                scope: grant.scope,
                proof: grant.proof,
            });
        }
        let leaf = certificates.and_then(<[_]>::first);
        let (true, Some(leaf)) = (self.certificate_suffices, leaf) else {
            return Err(Refusal::NoCredential);
        };
        let name = certificate_name(leaf)
            .map_err(|e| Refusal::Certificate(format!("the client certificate: {e}")))?;
        match name {
            CertName::Spiffe(spiffe) => {
                self.check_trust_domain(&spiffe)?;
                Ok(Principal {
                    scope: spiffe
                        .environment()
                        .map_or(Scope::Any, |e| Scope::only([e])),
                    proof: Proof::Spiffe,
                })
            }
            CertName::Legacy(identity) => match &self.legacy {
                Some(allowed) => Ok(Principal {
                    scope: allowed.clone(),
                    proof: Proof::LegacyCertificate,
                }),
                None => Err(Refusal::Certificate(format!(
                    "a caller without a secret needs a client certificate with a SPIFFE ID \
                     (spiffe://{}/operator/<name>, or .../env/<environment>/operator/<name>); \
                     {identity:?} has none",
                    self.trust_domain
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<Vec<ScopedSecret>, String> {
        let path = std::env::temp_dir().join(format!(
            "gatemesh-secrets-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let read = read_secrets_file("X_FILE", &path)
            .map_err(|e| e.0.replace(&path.display().to_string(), "<path>"));
        let _ = std::fs::remove_file(&path);
        read
    }

    #[test]
    fn a_secrets_file_holds_scopes_and_secrets_and_its_errors_name_the_line() {
        let read =
            file("# the instances\n\n  dev   s3cret dev\nbeta,prod,beta\tbp\n* any-env\n").unwrap();
        let lines: Vec<(String, &str)> = read
            .iter()
            .map(|s| (s.scope.to_string(), s.secret.expose()))
            .collect();
        assert_eq!(
            lines,
            [
                ("dev".to_string(), "s3cret dev"),
                ("beta,prod".to_string(), "bp"),
                ("*".to_string(), "any-env")
            ]
        );
        for (text, error) in [
            (
                "dev s\nprod\n",
                "X_FILE: <path>:2: expected `<environments> <secret>`",
            ),
            (
                "dev s\n\nbeta ev\ts2\n",
                "X_FILE: <path>:3: the secret: expected printable ASCII",
            ),
            ("dev,,beta s\n", "X_FILE: <path>:1: environment \"\""),
            (
                "dev\n",
                "X_FILE: <path>:1: expected `<environments> <secret>`",
            ),
            ("a/b s\n", "X_FILE: <path>:1: environment \"a/b\""),
            (
                "dev s\nprod s\n",
                "X_FILE: <path>:2: the same secret as line 1",
            ),
            (
                "# nothing\n",
                "X_FILE: <path>: no `<environments> <secret>` line",
            ),
            (
                "dev caf\u{e9}\n",
                "X_FILE: <path>:1: the secret: expected printable",
            ),
        ] {
            let e = file(text).unwrap_err();
            assert!(e.starts_with(error), "{text:?}: {e}");
            assert!(!e.contains("caf"), "never the secret: {e}");
        }
        let e = read_secrets_file("X_FILE", Path::new("/nonexistent/secrets")).unwrap_err();
        assert!(
            e.0.starts_with("X_FILE: cannot read /nonexistent/secrets"),
            "{e}"
        );
    }

    fn credentials() -> Credentials {
        Credentials {
            shared: Some(Secret::new("shared")),
            instances: vec![ScopedSecret {
                scope: Scope::only(["dev"]),
                secret: Secret::new("dev-secret"),
            }],
            callers: vec![ScopedSecret {
                scope: Scope::only(["dev", "beta"]),
                secret: Secret::new("ops"),
            }],
            mtls: false,
            certificate_suffices: false,
            trust_domain: "gatemesh".into(),
            legacy: None,
        }
    }

    fn hello(id: &str, env: &str) -> pb::Hello {
        pb::Hello {
            instance_id: id.into(),
            environment: env.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_grants_its_role_and_its_environments_only() {
        let c = credentials();
        assert_eq!(
            c.secret(b"shared", Role::Instance),
            Some(Grant {
                scope: Scope::Any,
                proof: Proof::SharedSecret
            })
        );
        assert_eq!(
            c.secret(b"dev-secret", Role::Instance).unwrap().scope,
            Scope::only(["dev"])
        );
        assert_eq!(c.secret(b"dev-secret", Role::Caller), None, "roles apart");
        assert_eq!(c.secret(b"ops", Role::Instance), None);
        assert!(c.authenticates(Some(b"ops"), false));
        assert!(!c.authenticates(Some(b"nope"), true));
        assert!(!c.authenticates(None, true));

        let presented = c.stream(Some(b"dev-secret"), None).unwrap();
        let caller = c.bind_hello(&presented, &hello("dev-1", "dev")).unwrap();
        assert_eq!(
            (&**caller.id(), &**caller.environment(), caller.proof()),
            ("dev-1", "dev", Proof::EnvironmentSecret)
        );
        let refused = c
            .bind_hello(&presented, &hello("dev-1", "prod"))
            .unwrap_err();
        assert!(matches!(refused, Refusal::Environment(_)), "{refused:?}");
        assert!(matches!(c.stream(Some(b"x"), None), Err(Refusal::Secret)));
        assert!(matches!(c.stream(None, None), Err(Refusal::NoCredential)));

        let ops = c.caller(Some(b"ops"), None).unwrap();
        assert_eq!(ops.scope, Scope::only(["beta", "dev"]));
        assert!(matches!(ops.local_caller(), Err(Refusal::Environment(_))));
        let admin = c.caller(Some(b"shared"), None).unwrap();
        assert_eq!(&**admin.local_caller().unwrap().environment(), "");
        let one = Principal {
            scope: Scope::only(["dev"]),
            proof: Proof::EnvironmentSecret,
        };
        assert_eq!(&**one.local_caller().unwrap().environment(), "dev");
        assert!(matches!(c.caller(None, None), Err(Refusal::NoCredential)));
        assert!(matches!(
            c.caller(Some(b"dev-secret"), None),
            Err(Refusal::Secret)
        ));
    }

    #[test]
    fn scopes_parse_print_and_allow() {
        assert_eq!(Scope::parse("*").unwrap(), Scope::Any);
        let s = Scope::parse("prod,beta").unwrap();
        assert_eq!(s.to_string(), "beta,prod");
        assert!(s.allows("prod") && !s.allows("dev") && Scope::Any.allows("dev"));
        assert!(Scope::parse("").is_err());
        assert!(Scope::parse("*,dev").is_err());
    }
}
