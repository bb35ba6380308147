//! PEM files named by settings, read and checked once at start.
//!
//! A TLS setting that points at a missing, unreadable or malformed file
//! must stop the binary with the variable's name, not fail later on the
//! first handshake.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ConfigError;

/// Reads `path` (named by `var`) and checks it holds one or more
/// certificates.
pub fn certificates(var: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(var, path)?;
    check_certificates(var, &pem)?;
    Ok(pem)
}

/// Reads `path` (named by `var`) and checks it holds a private key.
pub fn private_key(var: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let pem = read(var, path)?;
    check_private_key(var, &pem)?;
    Ok(pem)
}

/// A certificate chain and its private key, both PEM, checked.
pub struct KeyPair {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// A [`KeyPair`] from two settings given both or neither (`(variable,
/// path)` each): `None` when neither is set; when one is, an error naming
/// the other.
pub fn key_pair(
    (cert_var, cert): (&str, Option<&Path>),
    (key_var, key): (&str, Option<&Path>),
) -> Result<Option<KeyPair>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError(format!(
            "{key_var}: required when {cert_var} is set"
        ))),
        (None, Some(_)) => Err(ConfigError(format!(
            "{cert_var}: required when {key_var} is set"
        ))),
        (Some(cert), Some(key)) => Ok(Some(KeyPair {
            cert_pem: certificates(cert_var, cert)?,
            key_pem: private_key(key_var, key)?,
        })),
    }
}

/// Checks that `pem` holds one or more well-formed certificates.
pub fn check_certificates(var: &str, pem: &[u8]) -> Result<usize, ConfigError> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| ConfigError(format!("{var}: malformed PEM certificate: {e}")))?;
        count += 1;
    }
    if count == 0 {
        return Err(ConfigError(format!(
            "{var}: expected a PEM file with one or more certificates, found none"
        )));
    }
    Ok(count)
}

/// Checks that `pem` holds a private key (PKCS#8, PKCS#1 or SEC1).
pub fn check_private_key(var: &str, pem: &[u8]) -> Result<(), ConfigError> {
    PrivateKeyDer::from_pem_slice(pem)
        .map(drop)
        .map_err(|e| ConfigError(format!("{var}: expected a PEM private key: {e}")))
}

fn read(var: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError(format!("{var}: cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_variable() {
        let e = certificates("X_CERT", Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(
            e.0.starts_with("X_CERT: cannot read /nonexistent/cert.pem"),
            "{e}"
        );
        let e = check_certificates("X_CERT", b"not pem").unwrap_err();
        assert!(e.0.starts_with("X_CERT: expected a PEM file"), "{e}");
        let e = check_private_key(
            "X_KEY",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap_err();
        assert!(e.0.starts_with("X_KEY: expected a PEM private key"), "{e}");
    }
}
