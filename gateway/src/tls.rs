//! TLS for the gRPC port, terminated by the gateway itself (in
//! [`crate::listener`]) so that its certificates can change while it runs:
//! the server certificate, and with a client CA, mTLS.
//!
//! Each new connection takes the rustls [`ServerConfig`] in force, built
//! from the files `GATEWAY_TLS_CERT`, `GATEWAY_TLS_KEY` and
//! `GATEWAY_TLS_CLIENT_CA`, which are read again when one of them changes
//! ([`Reloading`]): short-lived certificates (SPIRE, ACME-style renewals)
//! keep working, and connections already open keep theirs. Files that do
//! not load (a key rotated before its certificate) leave the previous
//! configuration in force, said in the log and in `/health` until a later
//! change loads.
//!
//! What a client certificate proves (its SPIFFE ID, the id and
//! environment a hello may name) is [`crate::credentials`]' part.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::{Stream, StreamExt as _};
use gatemesh_runtime::reload::Reloading;
use gatemesh_runtime::{ConfigError, pem};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::listener::{ConnIo, Incoming};
use crate::refusal::{Port, Refusal, Refusals};

/// HTTP/2, the one protocol of the port.
const ALPN_H2: &[u8] = b"h2";

/// The gRPC port's TLS: the configuration new connections get, and
/// whether client certificates are required (mTLS). Cheap to clone.
#[derive(Clone)]
pub struct GatewayTls {
    mtls: bool,
    config: Arc<Mutex<Reloading<ServerConfig>>>,
}

impl fmt::Debug for GatewayTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayTls")
            .field("mtls", &self.mtls)
            .field("problem", &self.problem())
            .finish_non_exhaustive()
    }
}

impl GatewayTls {
    /// From PEM in memory (embedding, tests): fixed, never reloaded.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let config = server_config(cert_pem, key_pem, client_ca_pem)?;
        Ok(Self {
            mtls: client_ca_pem.is_some(),
            config: Arc::new(Mutex::new(Reloading::fixed("TLS", config))),
        })
    }

    /// Reads and checks the files named by `GATEWAY_TLS_CERT`,
    /// `GATEWAY_TLS_KEY` and `GATEWAY_TLS_CLIENT_CA`; `None` when TLS is
    /// off. A half-given setting names what is missing. They are read
    /// again when they change.
    pub(crate) fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<Self>, ConfigError> {
        let (Some(cert), Some(key)) = (cert, key) else {
            // Only to name what is missing.
            pem::key_pair(("GATEWAY_TLS_CERT", cert), ("GATEWAY_TLS_KEY", key))?;
            if client_ca.is_some() {
                return Err(ConfigError(
                    "GATEWAY_TLS_CLIENT_CA: mTLS needs GATEWAY_TLS_CERT and GATEWAY_TLS_KEY too"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let files = Files {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
        };
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Reloading::new("the gRPC port's TLS files", paths, move || files.load())?;
        Ok(Some(Self {
            mtls: client_ca.is_some(),
            config: Arc::new(Mutex::new(config)),
        }))
    }

    pub fn is_mtls(&self) -> bool {
        self.mtls
    }

    /// The configuration for a new connection: the files read again
    /// first when they changed since the last connection.
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        self.config.lock().current()
    }

    /// Why the files as they are now do not load (the previous ones stay
    /// in force), for `/health`.
    pub fn problem(&self) -> Option<String> {
        self.config.lock().problem().map(str::to_string)
    }

    /// Changes loaded, and changes that did not load, since start.
    pub fn reloads(&self) -> (u64, u64) {
        let config = self.config.lock();
        (config.reloads(), config.failures())
    }
}

/// Where the files are.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl Files {
    fn load(&self) -> Result<ServerConfig, ConfigError> {
        let pair = pem::key_pair(
            ("GATEWAY_TLS_CERT", Some(&self.cert)),
            ("GATEWAY_TLS_KEY", Some(&self.key)),
        )?
        .expect("both are given");
        let client_ca = self
            .client_ca
            .as_deref()
            .map(|ca| pem::certificates("GATEWAY_TLS_CLIENT_CA", ca))
            .transpose()?;
        server_config(&pair.cert_pem, &pair.key_pem, client_ca.as_deref())
    }
}

/// The rustls configuration of the port: HTTP/2 only; with `client_ca_pem`,
/// client certificates signed by it are required.
fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca_pem: Option<&[u8]>,
) -> Result<ServerConfig, ConfigError> {
    let usable = |e: String| {
        ConfigError(format!(
            "GATEWAY_TLS_CERT, GATEWAY_TLS_KEY: not a usable TLS identity (is the key the \
             certificate's?): {e}"
        ))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usable(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| usable(e.to_string()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| usable(e.to_string()))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let ca = |e: String| ConfigError(format!("GATEWAY_TLS_CLIENT_CA: {e}"));
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots
                    .add(cert.map_err(|e| ca(e.to_string()))?)
                    .map_err(|e| ca(format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| ca(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| usable(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Says how the port serves: cleartext is for development.
pub(crate) fn announce(tls: Option<&GatewayTls>) {
    match tls {
        None => tracing::warn!(
            "serving cleartext: development only (set GATEWAY_TLS_CERT and GATEWAY_TLS_KEY)"
        ),
        Some(tls) => tracing::info!(mtls = tls.is_mtls(), "serving TLS"),
    }
}

/// The gRPC port's connections over TLS, for `serve_with_incoming_shutdown`.
/// Each accepted socket (a [`ConnIo`], under the listener's deadline and
/// cap: a handshake that never ends is closed at stage `tls`) runs its
/// handshake beside the others, with the configuration in force when it
/// was accepted; a finished one goes to tonic, whose `Connected` impl for
/// a rustls stream makes its `TlsConnectInfo`: `request.peer_certs()` and
/// `request.remote_addr()` work as under tonic's own TLS. A client
/// certificate the handshake refuses (unknown CA, expired, none under
/// mTLS) is a refusal of reason `certificate`.
pub(crate) struct TlsIncoming {
    tcp: Incoming,
    tls: GatewayTls,
    refusals: Arc<Refusals>,
    handshakes: FuturesUnordered<Handshake>,
    tcp_done: bool,
}

type Handshake =
    Pin<Box<dyn Future<Output = (io::Result<TlsStream<ConnIo>>, Option<SocketAddr>)> + Send>>;

/// Sockets taken from the listener in one poll at most, so that a flood of
/// connections cannot starve the handshakes under way.
const ACCEPT_BATCH: usize = 64;

impl TlsIncoming {
    pub(crate) fn new(tcp: Incoming, tls: GatewayTls, refusals: Arc<Refusals>) -> Self {
        Self {
            tcp,
            tls,
            refusals,
            handshakes: FuturesUnordered::new(),
            tcp_done: false,
        }
    }

    fn failed(&self, error: &io::Error, remote: Option<SocketAddr>) {
        let tls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls_error {
            Some(
                e @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented),
            ) => {
                let refusal =
                    Refusal::Certificate(format!("TLS handshake: client certificate: {e}"));
                self.refusals.record(Port::Grpc, &refusal, remote);
            }
            _ => tracing::debug!(remote = remote.map(tracing::field::display), error = %error,
                "TLS handshake failed"),
        }
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsStream<ConnIo>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let mut accepted = 0;
        while !this.tcp_done {
            if accepted == ACCEPT_BATCH {
                cx.waker().wake_by_ref();
                break;
            }
            match Pin::new(&mut this.tcp).poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => {
                    accepted += 1;
                    let remote = io.remote();
                    let accept = TlsAcceptor::from(this.tls.server_config()).accept(io);
                    this.handshakes
                        .push(Box::pin(async move { (accept.await, remote) }));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.tcp_done = true,
                Poll::Pending => break,
            }
        }
        loop {
            match this.handshakes.poll_next_unpin(cx) {
                Poll::Ready(Some((Ok(stream), _))) => return Poll::Ready(Some(Ok(stream))),
                Poll::Ready(Some((Err(e), remote))) => this.failed(&e, remote),
                Poll::Ready(None) if this.tcp_done => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The reloads of the port's TLS files for `/metrics`.
#[derive(Debug)]
pub(crate) struct TlsMetrics(pub(crate) GatewayTls);

impl Collector for TlsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let (reloads, failures) = self.0.reloads();
        for (name, help, value) in [
            (
                "tls_reloads",
                "Changes of the gRPC port's TLS files loaded while running",
                reloads,
            ),
            (
                "tls_reload_failures",
                "Changes of the gRPC port's TLS files that did not load (the previous ones stayed)",
                failures,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}
