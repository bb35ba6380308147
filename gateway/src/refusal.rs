//! Refusals at the boundary: why a stream, a call or a request was turned
//! away ([`Refusal`], made where the credential is checked), counted in
//! `gatemesh_auth_refused_total{port,reason}` and logged at most once a
//! minute per peer address, with the number not logged since.
//!
//! A fleet with a rotated secret, an expired certificate or a typo repeats
//! its refusal at every reconnect, and someone guessing repeats it as
//! fast as they can: the counter says how many, the log says who and why
//! without drowning the journal.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::time::Instant;
use tonic::{Code, Status};

/// One log line per peer address at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered for the rate limit; beyond, the oldest quiet ones
/// are forgotten, and if none is, the rest share one entry.
const MAX_ADDRESSES: usize = 4096;

/// Why a peer was refused. Its message is what the peer is told (the
/// status, or the HTTP body); its [`Reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No secret and no certificate that may stand in for one.
    #[error(
        "missing secret: send {} or authorization: Bearer",
        gatemesh_proto::SECRET_METADATA_KEY
    )]
    NoCredential,
    /// A secret that is none of this role's.
    #[error("wrong secret")]
    Secret,
    /// A client certificate the gateway cannot take: refused by the TLS
    /// handshake (unknown CA, expired, none), unreadable, of another trust
    /// domain, without a SPIFFE ID where one is needed.
    #[error("{0}")]
    Certificate(String),
    /// The hello names another instance or environment than the
    /// certificate does.
    #[error("{0}")]
    Identity(String),
    /// The credential is good but may not name this environment (a scoped
    /// secret, a legacy certificate, a confined caller naming another
    /// environment or an instance of one).
    #[error("{0}")]
    Environment(String),
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::NoCredential => Reason::NoCredential,
            Refusal::Secret => Reason::Secret,
            Refusal::Certificate(_) => Reason::Certificate,
            Refusal::Identity(_) => Reason::Identity,
            Refusal::Environment(_) => Reason::Environment,
        }
    }

    /// `UNAUTHENTICATED` for a missing or wrong secret, `PERMISSION_DENIED`
    /// for a credential that does not cover what was asked.
    pub fn code(&self) -> Code {
        match self {
            Refusal::NoCredential | Refusal::Secret => Code::Unauthenticated,
            Refusal::Certificate(_) | Refusal::Identity(_) | Refusal::Environment(_) => {
                Code::PermissionDenied
            }
        }
    }
}

impl From<&Refusal> for Status {
    fn from(refusal: &Refusal) -> Self {
        Status::new(refusal.code(), refusal.to_string())
    }
}

/// The `reason` label of `gatemesh_auth_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    NoCredential,
    Secret,
    Certificate,
    Identity,
    Environment,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::NoCredential,
        Reason::Secret,
        Reason::Certificate,
        Reason::Identity,
        Reason::Environment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoCredential => "no_credential",
            Reason::Secret => "secret",
            Reason::Certificate => "certificate",
            Reason::Identity => "identity",
            Reason::Environment => "environment",
        }
    }
}

/// The `port` label: where the refusal happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// The gRPC port: streams, TLS handshakes, admin calls.
    Grpc,
    /// The operator HTTP port (`/instances`).
    Http,
}

impl Port {
    pub const ALL: [Port; 2] = [Port::Grpc, Port::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
        }
    }
}

/// The gateway's refusals: counted by port and reason, logged at most
/// once a minute per peer address.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [[AtomicU64; Reason::ALL.len()]; Port::ALL.len()],
    log: Mutex<LogLimit>,
}

impl Refusals {
    /// Counts `refusal` and logs it, unless this address was logged less
    /// than a minute ago (then the next line says how many were not).
    pub fn record(&self, port: Port, refusal: &Refusal, remote: Option<SocketAddr>) {
        self.counts[port as usize][refusal.reason() as usize].fetch_add(1, Ordering::Relaxed);
        let remote_ip = remote.map(|a| a.ip());
        match self.log.lock().admit(remote_ip, Instant::now()) {
            Some(suppressed) => tracing::warn!(
                port = port.as_str(),
                reason = refusal.reason().as_str(),
                remote = remote.map(tracing::field::display),
                suppressed,
                error = %refusal,
                "refused at the boundary (at most one line a minute per address; \
                 `suppressed` counts those not logged since)"
            ),
            None => tracing::debug!(
                port = port.as_str(),
                reason = refusal.reason().as_str(),
                remote = remote.map(tracing::field::display),
                error = %refusal,
                "refused at the boundary"
            ),
        }
    }

    /// Refusals so far on `port` for `reason`.
    pub fn count(&self, port: Port, reason: Reason) -> u64 {
        self.counts[port as usize][reason as usize].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct LogLimit {
    by_address: HashMap<Option<IpAddr>, Logged>,
}

#[derive(Debug)]
struct Logged {
    at: Instant,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(suppressed since the last line)` when a line may be logged
    /// for `address` now; `None` when it was logged within the minute.
    fn admit(&mut self, address: Option<IpAddr>, now: Instant) -> Option<u64> {
        if !self.by_address.contains_key(&address) && self.by_address.len() >= MAX_ADDRESSES {
            self.by_address
                .retain(|_, logged| now.duration_since(logged.at) < LOG_EVERY);
        }
        let key = if self.by_address.contains_key(&address) || self.by_address.len() < MAX_ADDRESSES
        {
            address
        } else {
            None
        };
        match self.by_address.get_mut(&key) {
            Some(logged) if now.duration_since(logged.at) < LOG_EVERY => {
                logged.suppressed += 1;
                None
            }
            Some(logged) => {
                let suppressed = std::mem::take(&mut logged.suppressed);
                logged.at = now;
                Some(suppressed)
            }
            None => {
                self.by_address.insert(
                    key,
                    Logged {
                        at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// `gatemesh_auth_refused_total{port,reason}`, every pair from the start.
#[derive(Debug)]
pub(crate) struct RefusalMetrics(pub(crate) Arc<Refusals>);

impl Collector for RefusalMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut family = encoder.encode_descriptor(
            "gatemesh_auth_refused",
            "Streams, calls, TLS handshakes and HTTP requests refused for their credentials, by \
             port (grpc, http) and reason (no_credential, secret, certificate, identity, \
             environment)",
            None,
            MetricType::Counter,
        )?;
        for port in Port::ALL {
            for reason in Reason::ALL {
                let labels = [("port", port.as_str()), ("reason", reason.as_str())];
                ConstCounter::new(self.0.count(port, reason))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_a_minute_per_address_saying_how_many_were_not_logged() {
        let mut limit = LogLimit::default();
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        assert_eq!(limit.admit(a, Instant::now()), Some(0));
        assert_eq!(limit.admit(a, Instant::now()), None);
        assert_eq!(limit.admit(b, Instant::now()), Some(0), "per address");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(limit.admit(a, Instant::now()), None);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(limit.admit(a, Instant::now()), Some(2), "two not logged");
        assert_eq!(limit.admit(a, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_addresses_stays_bounded() {
        let mut limit = LogLimit::default();
        for i in 0..(MAX_ADDRESSES as u32 + 10) {
            limit.admit(Some(IpAddr::from(i.to_be_bytes())), Instant::now());
        }
        assert!(limit.by_address.len() <= MAX_ADDRESSES + 1);
        tokio::time::advance(LOG_EVERY).await;
        assert_eq!(
            limit.admit(Some(IpAddr::from([192, 0, 2, 1])), Instant::now()),
            Some(0),
            "quiet entries make room"
        );
        assert!(limit.by_address.len() <= 2);
    }

    #[test]
    fn counts_by_port_and_reason_and_codes() {
        let r = Refusals::default();
        r.record(Port::Http, &Refusal::Secret, None);
        r.record(Port::Grpc, &Refusal::Identity("x".into()), None);
        assert_eq!(r.count(Port::Http, Reason::Secret), 1);
        assert_eq!(r.count(Port::Grpc, Reason::Secret), 0);
        assert_eq!(r.count(Port::Grpc, Reason::Identity), 1);
        assert_eq!(Refusal::Secret.code(), Code::Unauthenticated);
        assert_eq!(
            Refusal::Environment(String::new()).code(),
            Code::PermissionDenied
        );
        assert_eq!(
            Refusal::NoCredential.to_string(),
            "missing secret: send x-gatemesh-secret or authorization: Bearer"
        );
    }
}
