//! Config structs deserialized from environment variables with `envy`.
//!
//! Values come from an injectable iterator, so tests never touch the real
//! environment. Errors name the full variable and what it expects.

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Reads `T` from the variables in `vars` that start with `prefix`.
pub fn from_vars<T, I>(prefix: &str, vars: I) -> Result<T, ConfigError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = (String, String)>,
{
    // An empty value means "unset", as in most shells' `VAR=` idiom.
    let vars = vars.into_iter().filter(|(_, v)| !v.is_empty());
    envy::prefixed(prefix).from_iter(vars).map_err(|e| match e {
        envy::Error::MissingValue(field) => ConfigError(format!(
            "{prefix}{} is required but not set",
            field.to_uppercase()
        )),
        envy::Error::Custom(message) => ConfigError(name_variable(prefix, &message)),
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Example {
        secret: String,
        #[serde(default)]
        port: Option<u16>,
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
