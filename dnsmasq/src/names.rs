//! Which names may reach dnsmasq: a VPS id becomes a DNS name the moment
//! it is written to the hosts file, so an instance's answer (or, when the
//! operator trusts them, a tenant's DHCP hostname) is checked here before
//! it can. A name must be a valid DNS name (RFC 1123, at most 253 bytes)
//! and inside the VPS namespace the operator configured; an answer from an
//! environment that may not name leases on this gateway is refused too.

use std::fmt;

/// The longest DNS name, in bytes, without the trailing dot.
pub const MAX_NAME: usize = 253;

/// The names this gateway writes: each starts with `prefix` and, when
/// `domain` is set, ends with `.<domain>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub prefix: String,
    pub domain: Option<String>,
    /// Environments whose instances may name leases; empty: any.
    pub environments: Vec<String>,
}

impl Default for Namespace {
    fn default() -> Self {
        Self {
            prefix: "vps-".into(),
            domain: None,
            environments: Vec::new(),
        }
    }
}

/// Why a name was refused. Made where the check fails; a log field, a
/// metric label and the lease's error at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameRefusal {
    /// Longer than [`MAX_NAME`] bytes.
    TooLong,
    /// Not an RFC 1123 name: empty labels (`.`, `..`), characters other
    /// than letters, digits and `-`, a label over 63 bytes or starting or
    /// ending with `-`, control characters, spaces, newlines.
    NotDnsName,
    /// A DNS name, but not a VPS name: `localhost`, `www.example.com`.
    OutsideNamespace,
    /// From an environment that may not name leases here.
    Environment,
    /// Another lease holds the same name spelt otherwise (`vps-a`,
    /// `VPS-A`): DNS does not tell them apart, so both would answer.
    CaseClash,
}

impl NameRefusal {
    pub const ALL: [Self; 5] = [
        Self::TooLong,
        Self::NotDnsName,
        Self::OutsideNamespace,
        Self::Environment,
        Self::CaseClash,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NotDnsName => "not_dns_name",
            Self::OutsideNamespace => "outside_namespace",
            Self::Environment => "environment",
            Self::CaseClash => "case_clash",
        }
    }
}

impl fmt::Display for NameRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TooLong => "longer than a DNS name can be",
            Self::NotDnsName => "not a valid DNS name",
            Self::OutsideNamespace => "outside the VPS namespace",
            Self::Environment => "from an environment that may not name leases here",
            Self::CaseClash => "another lease holds that name spelt otherwise (DNS ignores case)",
        })
    }
}

impl Namespace {
    /// `name` as a VPS name this gateway may write, or why not.
    pub fn check(&self, name: &str) -> Result<(), NameRefusal> {
        if name.len() > MAX_NAME {
            return Err(NameRefusal::TooLong);
        }
        if !is_dns_name(name) {
            return Err(NameRefusal::NotDnsName);
        }
        let lower = name.to_ascii_lowercase();
        let in_prefix =
            lower.len() > self.prefix.len() && lower.starts_with(&self.prefix.to_ascii_lowercase());
        let in_domain = self.domain.as_ref().is_none_or(|domain| {
            let domain = domain.trim_matches('.').to_ascii_lowercase();
            lower
                .strip_suffix(&domain)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
        });
        if in_prefix && in_domain {
            Ok(())
        } else {
            Err(NameRefusal::OutsideNamespace)
        }
    }

    /// Whether an answer from `environment` may name a lease.
    pub fn allows_environment(&self, environment: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == environment)
    }
}

/// RFC 1123 (section 2.1) host name: dot-separated labels of 1 to 63
/// letters, digits and hyphens, no label starting or ending with a hyphen.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// At most `max` bytes of `text`, cut at a character boundary, control
/// characters escaped: what a lease's error may keep of a peer's words.
pub fn short(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(max.min(text.len()) + 3);
    for c in text.chars() {
        let escaped: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + escaped.len() > max {
            out.push_str("...");
            break;
        }
        out.push_str(&escaped);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(prefix: &str, domain: Option<&str>) -> Namespace {
        Namespace {
            prefix: prefix.into(),
            domain: domain.map(Into::into),
            environments: Vec::new(),
        }
    }

    #[test]
    fn only_vps_names_pass() {
        let vps = ns("vps-", None);
        assert_eq!(vps.check("vps-42"), Ok(()));
        assert_eq!(vps.check("VPS-42"), Ok(()));
        assert_eq!(vps.check("vps-42.node1"), Ok(()));
        for outside in ["localhost", "www.example.com", "vps", "myvps-1"] {
            assert_eq!(
                vps.check(outside),
                Err(NameRefusal::OutsideNamespace),
                "{outside}"
            );
        }
        for bad in [
            "",
            ".",
            "..",
            "vps-1.",
            "vps-1..x",
            "vps-1\n10.0.0.1 evil",
            "vps 1",
            "vps-1#",
            "vps_1",
            "vps-1-",
            "vps-",
            "vps-1\u{0}",
            "vps-é",
        ] {
            assert_eq!(vps.check(bad), Err(NameRefusal::NotDnsName), "{bad:?}");
        }
        assert_eq!(vps.check(&"a".repeat(64)), Err(NameRefusal::NotDnsName));
        let long = format!("vps-{}", "a.".repeat(130));
        assert_eq!(vps.check(&long), Err(NameRefusal::TooLong));
        assert_eq!(
            vps.check(&"x".repeat(4_000_000)),
            Err(NameRefusal::TooLong),
            "a 4 MB answer is refused by its length alone"
        );
    }

    #[test]
    fn a_domain_narrows_the_namespace() {
        let vms = ns("vps-", Some("vms.example.net"));
        assert_eq!(vms.check("vps-1.vms.example.net"), Ok(()));
        for outside in [
            "vps-1",
            "vps-1.example.net",
            "vps-1.evilvms.example.net",
            "vms.example.net",
        ] {
            assert_eq!(
                vms.check(outside),
                Err(NameRefusal::OutsideNamespace),
                "{outside}"
            );
        }
    }

    #[test]
    fn environments_filter_only_when_given() {
        let mut any = Namespace::default();
        assert!(any.allows_environment("dev"));
        any.environments = vec!["prod".into()];
        assert!(any.allows_environment("prod"));
        assert!(!any.allows_environment("dev"));
    }

    #[test]
    fn short_cuts_and_escapes() {
        assert_eq!(short("abc", 10), "abc");
        assert_eq!(short("a\nb", 10), "a\\nb");
        let cut = short(&"é".repeat(100), 11);
        assert_eq!(cut, format!("{}...", "é".repeat(5)));
    }
}
