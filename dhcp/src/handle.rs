//! [`DhcpHandle`]: how everyone but the manager's task reads its state:
//! the status it publishes, and `GetLeases` pages it answers.

use gatemesh_proto::pb;
use tokio::sync::{mpsc, oneshot, watch};

use crate::DhcpStatus;

/// Leases per `GetLeases` page when the request names no size, and at most.
pub const DEFAULT_PAGE: usize = 1000;
pub const MAX_PAGE: usize = 5000;
/// Encoded bytes of leases per page at most, well under any frame limit
/// whatever the leases hold.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// A `GetLeases` request the manager cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("page_token {0:?} is not one this gateway gave")]
    BadToken(String),
}

/// The read side of a manager; cheap to clone.
#[derive(Clone)]
pub struct DhcpHandle {
    pub(crate) status: watch::Receiver<DhcpStatus>,
    pub(crate) queries: mpsc::Sender<Query>,
    /// The environments whose instances name the leases
    /// (`GATEWAY_DHCP_ENVIRONMENTS`); empty: any.
    pub(crate) namers: std::sync::Arc<[String]>,
}

impl DhcpHandle {
    /// Whether a caller of `environment` may read the leases: the names
    /// come from the instances of the naming environments, which are
    /// theirs to see (and a caller of every environment's, empty).
    pub fn may_read(&self, environment: &str) -> bool {
        environment.is_empty()
            || self.namers.is_empty()
            || self.namers.iter().any(|e| e == environment)
    }

    /// The latest status.
    pub fn status(&self) -> DhcpStatus {
        self.status.borrow().clone()
    }

    /// A receiver that changes with the status.
    pub fn watch(&self) -> watch::Receiver<DhcpStatus> {
        self.status.clone()
    }

    /// Resolves once `condition` holds; `false` if the manager is gone first.
    pub async fn wait_until(&self, condition: impl Fn(&DhcpStatus) -> bool) -> bool {
        let mut status = self.status.clone();
        status.wait_for(|s| condition(s)).await.is_ok()
    }

    /// The first page of leases and what they resolved to; `None` when
    /// the manager is not running.
    pub async fn leases(&self) -> Option<pb::GetLeasesResponse> {
        self.leases_page(pb::GetLeasesRequest::default())
            .await?
            .ok()
    }

    /// One page of leases, sorted by IP: `page_size` of them at most
    /// ([`DEFAULT_PAGE`] when 0, [`MAX_PAGE`] at most, and never more than
    /// [`MAX_PAGE_BYTES`]), after `page_token`. `None` when the manager is
    /// not running.
    pub async fn leases_page(
        &self,
        request: pb::GetLeasesRequest,
    ) -> Option<Result<pb::GetLeasesResponse, PageError>> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(Query::Leases(request, tx)).await.ok()?;
        rx.await.ok()
    }

    /// Makes the manager task panic, to exercise its supervision.
    #[doc(hidden)]
    pub async fn inject_crash(&self) {
        let _ = self.queries.send(Query::Crash).await;
    }
}

pub(crate) enum Query {
    Leases(
        pb::GetLeasesRequest,
        oneshot::Sender<Result<pb::GetLeasesResponse, PageError>>,
    ),
    Crash,
}
