//! Where the gateway is and how to reach it: the URL made of `--gateway`
//! and the TLS settings made of `--tls-*`, checked before anything is
//! dialled so that a mistake names the flag rather than a handshake.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail};
use gatemesh_runtime::pem;
use tonic::codegen::http::Uri;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::Cli;

/// The gateway's gRPC port, when an address names none.
pub const DEFAULT_PORT: u16 = 1537;

/// A gateway to dial.
pub struct Target {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// TLS settings of an `https://` URL.
    pub tls: Option<ClientTlsConfig>,
    /// A client certificate is presented: a gateway with
    /// `GATEWAY_TLS_SECRET_OPTIONAL=true` then needs no secret.
    pub client_cert: bool,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .field("client_cert", &self.client_cert)
            .finish()
    }
}

impl Target {
    /// Reads the flags (or their `GATEMESH_*` variables): the PEM files are
    /// read and checked here, a certificate without its key is refused, and
    /// TLS settings with an `http://` URL are a contradiction, not a
    /// silent downgrade.
    pub fn from_cli(cli: &Cli) -> anyhow::Result<Self> {
        let identity = match (&cli.tls_cert, &cli.tls_key) {
            (None, None) => None,
            (Some(_), None) => bail!("--tls-key (GATEMESH_TLS_KEY) is required with --tls-cert"),
            (None, Some(_)) => bail!("--tls-cert (GATEMESH_TLS_CERT) is required with --tls-key"),
            (Some(cert), Some(key)) => Some(Identity::from_pem(
                read(pem::certificates, "--tls-cert", cert)?,
                read(pem::private_key, "--tls-key", key)?,
            )),
        };
        let ca = cli
            .tls_ca
            .as_deref()
            .map(|ca| read(pem::certificates, "--tls-ca", ca))
            .transpose()?;
        let client_cert = identity.is_some();
        let tls_given = ca.is_some() || client_cert;
        let url = gateway_url(&cli.gateway, tls_given)?;
        let tls = url.starts_with("https://").then(|| {
            let mut config = ClientTlsConfig::new();
            config = match ca {
                Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                None => config.with_native_roots(),
            };
            if let Some(identity) = identity {
                config = config.identity(identity);
            }
            config
        });
        Ok(Self {
            url,
            tls,
            client_cert,
        })
    }
}

fn read(
    check: fn(&str, &Path) -> Result<Vec<u8>, gatemesh_runtime::ConfigError>,
    flag: &str,
    path: &Path,
) -> anyhow::Result<Vec<u8>> {
    check(flag, path).map_err(|e| anyhow!("{}", e.0))
}

/// The URL of `address`: a URL is kept (`http://` or `https://` only);
/// `host` or `host:port` becomes `https://` when TLS settings are given,
/// else `http://`, on [`DEFAULT_PORT`] when it names no port.
pub fn gateway_url(address: &str, tls_given: bool) -> anyhow::Result<String> {
    let url = match address.split_once("://") {
        Some(("http", _)) if tls_given => {
            bail!("--gateway {address}: TLS settings are given, so expected an https:// URL")
        }
        Some(("http" | "https", _)) => address.to_string(),
        Some(_) => bail!("--gateway {address}: expected http://, https:// or host:port"),
        None => {
            let scheme = if tls_given { "https" } else { "http" };
            format!("{scheme}://{address}")
        }
    };
    let uri: Uri = url
        .parse()
        .map_err(|e| anyhow!("--gateway {address}: not a valid address: {e}"))?;
    let Some(authority) = uri.authority() else {
        bail!("--gateway {address}: names no host");
    };
    if authority.port().is_some() || address.contains("://") {
        return Ok(url);
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    Ok(format!("{scheme}://{}:{DEFAULT_PORT}", authority.host()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_without_a_scheme_get_one_and_the_default_port() {
        let cases = [
            ("127.0.0.1:1600", false, "http://127.0.0.1:1600"),
            ("127.0.0.1:1600", true, "https://127.0.0.1:1600"),
            ("gw-node-1", false, "http://gw-node-1:1537"),
            ("gw-node-1", true, "https://gw-node-1:1537"),
            ("[::1]:9", false, "http://[::1]:9"),
            ("[::1]", true, "https://[::1]:1537"),
            ("http://gw:1", false, "http://gw:1"),
            ("https://gw:1", true, "https://gw:1"),
            ("https://gw", false, "https://gw"),
        ];
        for (address, tls, url) in cases {
            assert_eq!(gateway_url(address, tls).unwrap(), url, "{address}");
        }
    }

    #[test]
    fn contradictions_and_other_schemes_are_refused() {
        let e = gateway_url("http://gw:1", true).unwrap_err().to_string();
        assert_eq!(
            e,
            "--gateway http://gw:1: TLS settings are given, so expected an https:// URL"
        );
        let e = gateway_url("ftp://gw:1", false).unwrap_err().to_string();
        assert!(e.contains("expected http://, https:// or host:port"), "{e}");
        let e = gateway_url("gw node", false).unwrap_err().to_string();
        assert!(
            e.starts_with("--gateway gw node: not a valid address"),
            "{e}"
        );
    }
}
