//! The HTTP client of OTLP over HTTP/protobuf: one HTTP/1.1 request per
//! export on hyper, TLS by tokio-rustls with the system roots and
//! `OTEL_EXPORTER_OTLP_CERTIFICATE`. Both are in the tree already (tonic's);
//! the exporter's own client features would bring reqwest, or hyper
//! without TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::HttpError;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::ConfigError;

/// Collector answers are a few bytes; more is not read.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The TLS trust of an `https://` collector: the system roots, and the
/// PEM certificates of `ca_pem` (`OTEL_EXPORTER_OTLP_CERTIFICATE`).
pub(crate) fn tls_config(var: &str, ca_pem: Option<&[u8]>) -> Result<ClientConfig, ConfigError> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = RootCertStore::empty();
    // A root the store refuses is skipped, as tonic does; a missing
    // system store leaves the CA file.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| ConfigError(format!("{var}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConfigError(format!("{var}: {e}")))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("{var}: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Clone)]
pub(crate) struct HttpClient {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub(crate) fn new(tls: ClientConfig, timeout: Duration) -> Self {
        Self {
            tls: TlsConnector::from(Arc::new(tls)),
            timeout,
        }
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let https = match parts.uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{}: not an http:// or https:// URL", parts.uri).into()),
        };
        let authority = parts
            .uri
            .authority()
            .ok_or_else(|| format!("{}: no host", parts.uri))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        // HTTP/1.1 asks for the path alone, the host in its header.
        parts.uri = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?;
        parts
            .headers
            .insert(http::header::HOST, authority.as_str().parse()?);
        let request = Request::from_parts(parts, Full::new(body));
        let response = if https {
            let name = ServerName::try_from(host.to_string())?;
            let tls = self.tls.connect(name, tcp).await?;
            exchange(tls, request).await?
        } else {
            exchange(tcp, request).await?
        };
        Ok(response)
    }
}

/// One request on a new connection, and its whole answer.
async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // Ends with the connection, once the answer is read and `sender` dropped.
    tokio::spawn(connection);
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        tokio::time::timeout(self.timeout, self.send(request))
            .await
            .map_err(|_| format!("no answer within {} ms", self.timeout.as_millis()))?
    }
}
