//! Config structs deserialized from environment variables with `envy`.
//!
//! Values come from an injectable iterator, so tests never touch the real
//! environment. Errors name the full variable and what it expects.
//!
//! Rules every binary follows:
//!
//! - A variable with the binary's prefix that names no setting stops it,
//!   naming the nearest known one: a typo must not fall back to a default.
//! - An empty value counts as unset, except for the settings a binary
//!   lists as `empty_allowed`, where empty is a value of its own (for
//!   instance "switch this off").
//! - Numbers are checked against a range after parsing ([`range`]).
//!
//! A binary's settings are sections, each owned by the concern it
//! configures (the mesh, the DHCP manager, the allocator, ...): [`Env`]
//! holds the binary's variables once, checks them against the union of
//! its sections' names, and reads each section from the same variables.
//! (One struct flattening the others would not do: `envy` hands a
//! flattened struct its values as strings, and numbers then fail.)

use std::net::{IpAddr, ToSocketAddrs};
use std::ops::RangeInclusive;

use serde::de::{self, DeserializeOwned, Visitor};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The variables of one binary: those that start with its prefix, an
/// empty value left out (unset).
#[derive(Debug, Clone)]
pub struct Env {
    prefix: String,
    vars: Vec<(String, String)>,
}

impl Env {
    /// The variables of `vars` that start with `prefix`.
    pub fn new(prefix: &str, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        Self::with_empty_allowed(prefix, vars, &[])
    }

    /// [`Env::new`], where an empty value of a variable in `empty_allowed`
    /// (full names) is kept as an empty string.
    pub fn with_empty_allowed(
        prefix: &str,
        vars: impl IntoIterator<Item = (String, String)>,
        empty_allowed: &[&str],
    ) -> Self {
        let vars = vars
            .into_iter()
            .filter(|(k, v)| {
                k.starts_with(prefix) && (!v.is_empty() || empty_allowed.contains(&&**k))
            })
            .collect();
        Self {
            prefix: prefix.to_string(),
            vars,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Fails on the first variable that names no field of any of
    /// `sections` (each a [`fields`] list), naming the nearest known
    /// variable across all of them.
    pub fn check_known(&self, sections: &[&[&str]]) -> Result<(), ConfigError> {
        let prefix = &self.prefix;
        let known: Vec<String> = sections
            .iter()
            .flat_map(|fields| fields.iter())
            .map(|f| format!("{prefix}{}", f.to_uppercase()))
            .collect();
        for (name, _) in &self.vars {
            if known.iter().any(|k| k == name) {
                continue;
            }
            let nearest = known
                .iter()
                .min_by_key(|k| strsim::levenshtein(k, name))
                .map(String::as_str)
                .unwrap_or("none");
            return Err(ConfigError(format!(
                "{name}: unknown variable; did you mean {nearest}?"
            )));
        }
        Ok(())
    }

    /// Reads one section. The variables of the other sections are no
    /// concern of `T`'s; whether every variable belongs to some section
    /// is [`Env::check_known`]'s.
    pub fn section<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let prefix = &self.prefix;
        envy::prefixed(prefix.as_str())
            .from_iter(self.vars.iter().cloned())
            .map_err(|e| match e {
                envy::Error::MissingValue(field) => ConfigError(format!(
                    "{prefix}{} is required but not set",
                    field.to_uppercase()
                )),
                envy::Error::Custom(message) => ConfigError(name_variable(prefix, &message)),
            })
    }
}

/// Reads `T` from the variables in `vars` that start with `prefix`: a
/// binary with one section.
pub fn from_vars<T, I>(prefix: &str, vars: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    from_vars_with(prefix, vars, &[])
}

/// [`from_vars`], where an empty value of a variable in `empty_allowed`
/// (full names) is passed through as an empty string.
pub fn from_vars_with<T, I>(prefix: &str, vars: I, empty_allowed: &[&str]) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    let env = Env::with_empty_allowed(prefix, vars, empty_allowed);
    env.check_known(&[fields::<T>()])?;
    env.section()
}

/// `[("NAME", "value"), ...]` as the owned pairs the readers take: for
/// tests and for embedding a binary's settings in code.
pub fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An id setting's value, or when it is unset the host's name (`fallback`
/// when that cannot be read): `GATEWAY_ID`, `VPS_INSTANCE_ID`.
pub fn id_or_hostname(id: Option<&str>, fallback: &str) -> String {
    id.map(String::from).unwrap_or_else(|| {
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| fallback.into())
    })
}

/// The field names `T`'s `Deserialize` asks for, as serde declares them.
/// (A deserializer that only records what `deserialize_struct` is given.)
pub fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let mut probe = Fields(None);
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// envy names the variable without its prefix; put it back.
fn name_variable(prefix: &str, message: &str) -> String {
    match message.rsplit_once(" provided by ") {
        Some((head, var)) if !var.starts_with(prefix) => {
            format!("{prefix}{var}: {head}")
        }
        Some((head, var)) => format!("{var}: {head}"),
        None => format!("invalid {prefix}* setting: {message}"),
    }
}

/// Checks a value after parsing; `what` says what the variable expects.
pub fn ensure(ok: bool, var: &str, what: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!("{var}: expected {what}")))
    }
}

/// Checks that a numeric setting lies in `allowed`; the message names the
/// variable, the value and the range.
pub fn range<N>(var: &str, value: N, allowed: RangeInclusive<N>) -> Result<(), ConfigError>
where
    N: PartialOrd + std::fmt::Display + Copy,
{
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{var}={value}: expected {} to {}",
            allowed.start(),
            allowed.end()
        )))
    }
}

/// Secrets shorter than this stop the daemons at start ([`weak_secret`]).
pub const MIN_SECRET_LEN: usize = 16;

/// What the examples and docs write where a secret goes, and the words a
/// hurried operator types there: refused, whatever the case or the
/// punctuation (`CHANGE_ME`, `change-me`).
const PLACEHOLDERS: [&str; 10] = [
    "changeme",
    "changethis",
    "replaceme",
    "placeholder",
    "secret",
    "password",
    "example",
    "todo",
    "fixme",
    "xxx",
];

/// A shared secret must travel as a gRPC metadata (HTTP header) value:
/// visible ASCII and inner spaces only, no surrounding whitespace; and it
/// must not be a placeholder left as the example file has it, which would
/// let in anyone who has read that file.
pub fn check_secret(var: &str, secret: &str) -> Result<(), ConfigError> {
    ensure(!secret.is_empty(), var, "a non-empty secret")?;
    let letters: String = secret
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if PLACEHOLDERS.contains(&letters.as_str()) {
        return Err(ConfigError(format!(
            "{var}: a placeholder, not a secret: generate one (e.g. `openssl rand -hex 32`)"
        )));
    }
    let visible = secret.bytes().all(|b| (0x20..0x7f).contains(&b));
    let trimmed = !secret.starts_with(' ') && !secret.ends_with(' ');
    ensure(
        visible && trimmed,
        var,
        "printable ASCII without leading or trailing spaces (it travels as a gRPC header)",
    )
}

/// The length of `secret` when it is shorter than [`MIN_SECRET_LEN`],
/// too easy to guess for the daemons to start with it.
pub fn weak_secret(secret: &str) -> Option<usize> {
    (secret.len() < MIN_SECRET_LEN).then_some(secret.len())
}

/// The daemons' check at start: the first secret [`weak_secret`] finds
/// short, as one line naming where it is set and its length, never the
/// secret. (An embedding program picks its own secrets; tests use short
/// ones.)
pub fn refuse_weak_secrets(weak: &[(String, usize)]) -> Result<(), ConfigError> {
    match weak.first() {
        None => Ok(()),
        Some((at, length)) => Err(ConfigError(format!(
            "{at}: too short to be a secret ({length} characters, at least {MIN_SECRET_LEN}): \
             generate one (e.g. `openssl rand -hex 32`)"
        ))),
    }
}

/// A listen address: an IP address, or a host name resolved now (its
/// first address). Errors name the variable.
pub fn bind_addr(var: &str, value: &str) -> Result<IpAddr, ConfigError> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(ip);
    }
    let resolved = (value, 0)
        .to_socket_addrs()
        .map_err(|e| ConfigError(format!("{var}={value}: cannot resolve the host name: {e}")))?;
    let mut addrs: Vec<IpAddr> = resolved.map(|a| a.ip()).collect();
    // `localhost` often resolves to ::1 first; prefer IPv4 like most tools.
    addrs.sort_by_key(|ip| !ip.is_ipv4());
    addrs.first().copied().ok_or_else(|| {
        ConfigError(format!(
            "{var}={value}: the host name resolves to no address"
        ))
    })
}

/// Whether `value` is an id or environment label as the gateway's hello
/// check accepts it: 1 to `max` bytes of letters, digits and `.`, `_`,
/// `-`, `:`, `@`, `/`.
pub fn is_label(value: &str, max: usize) -> bool {
    (1..=max).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@/".contains(&b))
}

/// [`is_label`], or an error naming `var`.
pub fn check_label(var: &str, value: &str, max: usize) -> Result<(), ConfigError> {
    ensure(
        is_label(value, max),
        var,
        &format!("1 to {max} bytes of letters, digits and . _ - : @ /, got {value:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Example {
        secret: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default = "default_prefix")]
        prefix: String,
    }

    fn default_prefix() -> String {
        "vps-".into()
    }

    #[test]
    fn errors_name_the_variable() {
        let err = from_vars::<Example, _>("X_", vars(&[])).unwrap_err();
        assert_eq!(err.to_string(), "X_SECRET is required but not set");
        let err = from_vars::<Example, _>("X_", vars(&[("X_SECRET", "")])).unwrap_err();
        assert!(err.to_string().contains("X_SECRET"), "{err}");
        let err = from_vars::<Example, _>("X_", vars(&[("X_SECRET", "s"), ("X_PORT", "abc")]))
            .unwrap_err();
        assert!(err.to_string().starts_with("X_PORT: "), "{err}");
        assert!(err.to_string().contains("abc"), "{err}");
        let ok =
            from_vars::<Example, _>("X_", vars(&[("X_SECRET", "s"), ("X_PORT", "9")])).unwrap();
        assert_eq!((ok.secret.as_str(), ok.port), ("s", Some(9)));
    }

    #[test]
    fn an_unknown_variable_names_the_nearest_known_one() {
        assert_eq!(fields::<Example>(), ["secret", "port", "prefix"]);
        let err =
            from_vars::<Example, _>("X_", vars(&[("X_SECRET", "s"), ("X_PROT", "9")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "X_PROT: unknown variable; did you mean X_PORT?"
        );
        // Other prefixes are not ours to judge.
        from_vars::<Example, _>("X_", vars(&[("X_SECRET", "s"), ("Y_PROT", "9")])).unwrap();
    }

    #[derive(Debug, Deserialize)]
    struct Other {
        #[serde(default)]
        other_port: Option<u16>,
    }

    #[test]
    fn sections_read_the_same_variables_and_unknown_names_are_checked_across_all() {
        let env = Env::new(
            "X_",
            vars(&[("X_SECRET", "s"), ("X_PORT", "9"), ("X_OTHER_PORT", "10")]),
        );
        let sections = [fields::<Example>(), fields::<Other>()];
        env.check_known(&sections).unwrap();
        let example: Example = env.section().unwrap();
        let other: Other = env.section().unwrap();
        assert_eq!((example.port, other.other_port), (Some(9), Some(10)));
        let env = Env::new("X_", vars(&[("X_SECRET", "s"), ("X_OTHER_PROT", "1")]));
        assert_eq!(
            env.check_known(&sections).unwrap_err().to_string(),
            "X_OTHER_PROT: unknown variable; did you mean X_OTHER_PORT?"
        );
        let env = Env::new("X_", vars(&[("X_OTHER_PORT", "many")]));
        let e = env.section::<Other>().unwrap_err().to_string();
        assert!(
            e.starts_with("X_OTHER_PORT: "),
            "a number, section alone: {e}"
        );
    }

    #[test]
    fn empty_is_unset_unless_the_setting_allows_empty() {
        let c =
            from_vars::<Example, _>("X_", vars(&[("X_SECRET", "s"), ("X_PREFIX", "")])).unwrap();
        assert_eq!(c.prefix, "vps-");
        let c = from_vars_with::<Example, _>(
            "X_",
            vars(&[("X_SECRET", "s"), ("X_PREFIX", "")]),
            &["X_PREFIX"],
        )
        .unwrap();
        assert_eq!(c.prefix, "");
    }

    #[test]
    fn ranges_secrets_labels_and_addresses() {
        let e = range("X_N", 0u64, 1..=10).unwrap_err().to_string();
        assert_eq!(e, "X_N=0: expected 1 to 10");
        range("X_N", 10u64, 1..=10).unwrap();
        check_secret("X_S", "s3cret with space").unwrap();
        for bad in ["", "a\nb", " q1", "q1 ", "tab\there", "é"] {
            let e = check_secret("X_S", bad).unwrap_err().to_string();
            assert!(e.starts_with("X_S: expected"), "{bad:?}: {e}");
            assert!(
                !e.contains(bad) || bad.is_empty(),
                "the secret is never shown"
            );
        }
        // The examples' and docs' placeholders, copied as they are, would
        // let in anyone who read them.
        for placeholder in [
            "change-me",
            "CHANGE_ME",
            "changeme",
            "secret",
            "Password",
            "replace-me",
        ] {
            let e = check_secret("X_S", placeholder).unwrap_err().to_string();
            assert!(e.starts_with("X_S: a placeholder"), "{placeholder:?}: {e}");
        }
        check_secret("X_S", "change-me-7f3a9c21").unwrap();
        assert_eq!(weak_secret("short"), Some(5));
        assert_eq!(weak_secret(&"a".repeat(MIN_SECRET_LEN)), None);
        check_label("X_ID", "inst-1.a_b:c@d/e", 128).unwrap();
        assert!(check_label("X_ID", "", 128).is_err());
        assert!(check_label("X_ID", "a b", 128).is_err());
        assert!(check_label("X_ID", &"a".repeat(65), 64).is_err());
        assert_eq!(
            bind_addr("X_BIND", "127.0.0.1").unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
        assert!(bind_addr("X_BIND", "localhost").unwrap().is_loopback());
        let e = bind_addr("X_BIND", "no such host.invalid")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("X_BIND=no such host.invalid: "), "{e}");
    }
}
