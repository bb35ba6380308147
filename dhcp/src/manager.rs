//! [`DhcpManager`]: the supervised task that owns the leases, their
//! answers and the hosts file; [`DhcpService`]: a manager running on the
//! current runtime, as a node holds it.
//!
//! The task is supervised: a panic in it is caught, logged, counted and
//! shown in `/health`, and the task starts again with backoff from the
//! files on disk. A panic in a resolution costs only that attempt.
//!
//! dnsmasq rewrites its lease file in place (truncate, then write), so a
//! read can see half a file on any path: every read waits until two reads
//! a settle time apart agree and the file ends with a newline, and a lease
//! that is missing from a read is kept until it has been missing for
//! [`DhcpConfig::vanish_grace`], so a writer paused mid-file longer than
//! the settle time still flaps no name.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;
use gatemesh_runtime::Backoff;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handle::{DhcpHandle, Query};
use crate::owner::{Owner, panic_message};
use crate::{DhcpConfig, DhcpStatus, Resolver};

/// The manager, before it runs.
pub struct DhcpManager {
    config: DhcpConfig,
    status: watch::Sender<DhcpStatus>,
    queries: mpsc::Receiver<Query>,
}

impl DhcpManager {
    pub fn new(config: DhcpConfig) -> (Self, DhcpHandle) {
        let (status, status_rx) = watch::channel(DhcpStatus {
            crash_report: config.crash_report,
            max_leases: config.max_leases,
            ..DhcpStatus::default()
        });
        let (queries_tx, queries) = mpsc::channel(16);
        let handle = DhcpHandle {
            status: status_rx,
            queries: queries_tx,
            namers: config.namespace.environments.clone().into(),
        };
        (
            Self {
                config,
                status,
                queries,
            },
            handle,
        )
    }

    /// Runs until `shutdown` resolves, resolving leases through
    /// `resolver`, restarting the task with backoff whenever it panics.
    /// Resolutions still in flight at the end are dropped, which cancels
    /// them.
    pub async fn run(self, resolver: impl Resolver, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            status,
            mut queries,
        } = self;
        tokio::pin!(shutdown);
        let mut backoff =
            Backoff::new(config.restart_base, config.restart_max, config.crash_report);
        loop {
            backoff.connected();
            let base = status.borrow().clone();
            let owner = Owner::new(config.clone(), &resolver, &status, base);
            let run = AssertUnwindSafe(owner.run(&mut queries, shutdown.as_mut()));
            let panic = match run.catch_unwind().await {
                Ok(()) => break,
                Err(panic) => panic_message(&*panic),
            };
            let delay = backoff.next_delay();
            tracing::error!(
                reason = %panic,
                restart_in_ms = delay.as_millis() as u64,
                "DHCP manager crashed; restarting"
            );
            status.send_modify(|s| {
                s.crashes += 1;
                s.last_crash = Some((panic.clone(), Instant::now()));
                s.last_error = Some(format!("the manager crashed: {panic}"));
                s.running = false;
                s.restarting = true;
                s.in_flight = 0;
            });
            tokio::select! {
                _ = shutdown.as_mut() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        status.send_modify(|s| {
            s.running = false;
            s.restarting = false;
            s.in_flight = 0;
        });
        tracing::info!("DHCP manager stopped");
    }
}

/// A running manager.
pub struct DhcpService {
    pub handle: DhcpHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl DhcpService {
    /// Runs `manager` on the current runtime, resolving through `resolver`.
    pub fn spawn(manager: DhcpManager, handle: DhcpHandle, resolver: impl Resolver) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(manager.run(resolver, stop.clone().cancelled_owned()));
        Self { handle, stop, task }
    }

    /// Stops the manager and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
