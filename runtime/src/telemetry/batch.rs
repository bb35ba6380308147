//! The batching between finished spans and the exporter, with every loss
//! counted: the SDK's batch processor drops spans silently when its queue
//! is full, logs failed exports only through its own internal logs, and
//! its shutdown waits on a queue that a slow collector keeps full.
//!
//! Finished spans go into a bounded queue (never waiting: a full one drops
//! and counts the span); one task batches them and exports a batch when it
//! is full or [`BatchSettings::schedule_delay`] has passed, each export
//! bounded by [`BatchSettings::export_timeout`]. A failed export is counted
//! and logged (rate-limited); its spans are dropped, not retried, so a
//! dead collector costs a bounded queue, never memory. At shutdown, what
//! is left is exported within a deadline; what is not sent by then is
//! dropped and counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Level;

use super::config::BatchSettings;

/// The export's counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ExportStats {
    exported: AtomicU64,
    failures: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    dropped_shutdown: AtomicU64,
    /// Why the last export failed, until one succeeds: a `/health` reason.
    failing: Mutex<Option<String>>,
}

/// The process's export (one per process, like the global subscriber).
pub static STATS: ExportStats = ExportStats::new();

/// Why spans were dropped: the `reason` label of
/// `trace_spans_dropped_total`.
pub const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "shutdown"];

impl ExportStats {
    pub const fn new() -> Self {
        Self {
            exported: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_export_failed: AtomicU64::new(0),
            dropped_shutdown: AtomicU64::new(0),
            failing: Mutex::new(None),
        }
    }

    /// Why spans are not reaching the collector, while the last export
    /// failed: a `/health` reason. `None` when the last export went
    /// through, or export is off.
    pub fn problem(&self) -> Option<String> {
        self.failing().clone()
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        // The value is replaced whole: a panic cannot leave it torn.
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    /// Exports that failed or timed out.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Spans dropped for `reason`, one of [`DROP_REASONS`].
    pub fn dropped(&self, reason: &str) -> u64 {
        match reason {
            "queue_full" => &self.dropped_queue_full,
            "export_failed" => &self.dropped_export_failed,
            "shutdown" => &self.dropped_shutdown,
            _ => return 0,
        }
        .load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The export's counters as metrics, under the registry's prefix
/// (`gatemesh_gateway_`, `gatemesh_service_`): read when scraped.
#[derive(Debug)]
pub struct ExportCollector(pub &'static ExportStats);

impl Default for ExportCollector {
    fn default() -> Self {
        Self(&STATS)
    }
}

impl Collector for ExportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let stats = self.0;
        ConstCounter::new(stats.exported()).encode(encoder.encode_descriptor(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            None,
            MetricType::Counter,
        )?)?;
        ConstCounter::new(stats.failures()).encode(encoder.encode_descriptor(
            "trace_export_failures",
            "OTLP span exports that failed or timed out (their spans are dropped)",
            None,
            MetricType::Counter,
        )?)?;
        let mut family = encoder.encode_descriptor(
            "trace_spans_dropped",
            "Spans never exported, by reason: queue_full (the collector is slower than the \
             spans come), export_failed, shutdown (not sent within the shutdown deadline)",
            None,
            MetricType::Counter,
        )?;
        for reason in DROP_REASONS {
            let labels = [("reason", reason)];
            ConstCounter::new(stats.dropped(reason))
                .encode(family.encode_family(&labels.as_slice())?)?;
        }
        Ok(())
    }
}

enum Control {
    Flush,
    /// Export what is left by the deadline, then stop.
    Shutdown {
        deadline: Instant,
        done: oneshot::Sender<()>,
    },
}

/// The span processor: queues finished spans for [`run`].
#[derive(Debug)]
pub(crate) struct Batcher {
    spans: mpsc::Sender<SpanData>,
    control: mpsc::UnboundedSender<Control>,
    stats: &'static ExportStats,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flush => "Flush",
            Self::Shutdown { .. } => "Shutdown",
        })
    }
}

/// Stops the export task: see [`Stopper::stop`].
#[derive(Debug)]
pub(crate) struct Stopper {
    control: mpsc::UnboundedSender<Control>,
}

impl Stopper {
    /// Exports what is left, for at most `within`, and stops. Returns
    /// by then even if the exporter does not.
    pub(crate) async fn stop(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let (done, stopped) = oneshot::channel();
        if self
            .control
            .send(Control::Shutdown { deadline, done })
            .is_err()
        {
            return;
        }
        // The task honours the deadline itself; this one is a backstop
        // (a little later, so the task's count of what it dropped is made).
        let _ = tokio::time::timeout_at(deadline + Duration::from_millis(100), stopped).await;
    }
}

impl Batcher {
    /// Starts the export task on the current Tokio runtime.
    pub(crate) fn start<E>(
        exporter: E,
        settings: BatchSettings,
        endpoint: String,
        stats: &'static ExportStats,
    ) -> (Self, Stopper)
    where
        E: SpanExporter + 'static,
    {
        let (spans, queued) = mpsc::channel(settings.max_queue_size);
        let (control, commands) = mpsc::unbounded_channel();
        tokio::spawn(run(
            Export {
                exporter,
                settings,
                endpoint,
                stats,
            },
            queued,
            commands,
        ));
        (
            Self {
                spans,
                control: control.clone(),
                stats,
            },
            Stopper { control },
        )
    }
}

impl SpanProcessor for Batcher {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    /// Never waits and never logs (it runs inside the subscriber, while
    /// the span closes); drops are logged by the export task.
    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                ExportStats::add(&self.stats.dropped_queue_full, 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                ExportStats::add(&self.stats.dropped_shutdown, 1);
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Asked, not awaited: the caller may be on the runtime's thread.
        let _ = self.control.send(Control::Flush);
        Ok(())
    }

    /// The provider's shutdown (or drop): tells the task to export what it
    /// has and stop, without waiting. [`Stopper::stop`] is the bounded
    /// wait.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let (done, _) = oneshot::channel();
        let _ = self.control.send(Control::Shutdown {
            deadline: Instant::now() + timeout.min(super::SHUTDOWN_FLUSH),
            done,
        });
        Ok(())
    }
}

struct Export<E> {
    exporter: E,
    settings: BatchSettings,
    endpoint: String,
    stats: &'static ExportStats,
}

impl<E: SpanExporter> Export<E> {
    /// Sends `batch`, by `deadline` at the latest; counts and logs what
    /// it cost.
    async fn send(&self, batch: Vec<SpanData>, deadline: Instant) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len();
        let allowed = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout_at(deadline, self.exporter.export(batch)).await {
            Ok(Ok(())) => {
                ExportStats::add(&self.stats.exported, spans);
                if self.stats.failing().take().is_some() {
                    tracing::info!(endpoint = %self.endpoint, "span export works again");
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} ms", allowed.as_millis()),
        };
        ExportStats::add(&self.stats.failures, 1);
        ExportStats::add(&self.stats.dropped_export_failed, spans);
        *self.stats.failing() = Some(format!("span export to {} failing: {error}", self.endpoint));
        crate::limited!(
            Level::WARN,
            endpoint = %self.endpoint,
            spans,
            error,
            "span export failed; its spans are dropped (counted in trace_export_failures_total)"
        );
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.settings.export_timeout
    }

    /// Logs (rate-limited) spans the full queue dropped since `seen`.
    fn note_drops(&self, seen: &mut u64) {
        let dropped = self.stats.dropped("queue_full");
        if dropped > *seen {
            let since = dropped - *seen;
            *seen = dropped;
            crate::limited!(
                Level::WARN,
                dropped = since,
                max_queue_size = self.settings.max_queue_size,
                "span export queue full: the collector is slower than spans come; spans dropped \
                 (counted in trace_spans_dropped_total)"
            );
        }
    }
}

async fn run<E: SpanExporter>(
    export: Export<E>,
    mut queued: mpsc::Receiver<SpanData>,
    mut commands: mpsc::UnboundedReceiver<Control>,
) {
    let max_batch = export.settings.max_export_batch_size;
    let mut batch = Vec::with_capacity(max_batch.min(1024));
    let mut drops_seen = export.stats.dropped("queue_full");
    let mut tick = tokio::time::interval_at(
        Instant::now() + export.settings.schedule_delay,
        export.settings.schedule_delay,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => match command {
                Some(Control::Flush) => {
                    while let Ok(span) = queued.try_recv() {
                        batch.push(span);
                        if batch.len() >= max_batch {
                            export.send(std::mem::take(&mut batch), export.deadline()).await;
                        }
                    }
                    export.send(std::mem::take(&mut batch), export.deadline()).await;
                }
                Some(Control::Shutdown { deadline, done }) => {
                    queued.close();
                    while let Ok(span) = queued.try_recv() {
                        batch.push(span);
                    }
                    export.note_drops(&mut drops_seen);
                    shut_down(&export, batch, deadline).await;
                    let _ = done.send(());
                    return;
                }
                None => break,
            },
            span = queued.recv() => {
                let Some(span) = span else { break };
                batch.push(span);
                if batch.len() >= max_batch {
                    export.send(std::mem::take(&mut batch), export.deadline()).await;
                }
            }
            _ = tick.tick() => {
                export.note_drops(&mut drops_seen);
                export.send(std::mem::take(&mut batch), export.deadline()).await;
            }
        }
    }
    shut_down(&export, batch, Instant::now() + super::SHUTDOWN_FLUSH).await;
}

/// Exports `left` in batches until `deadline`; what is not sent by then is
/// dropped and counted.
async fn shut_down<E: SpanExporter>(
    export: &Export<E>,
    mut left: Vec<SpanData>,
    deadline: Instant,
) {
    let max_batch = export.settings.max_export_batch_size;
    let total = left.len();
    while !left.is_empty() {
        if Instant::now() >= deadline {
            break;
        }
        let rest = left.split_off(left.len().min(max_batch));
        export.send(left, deadline.min(export.deadline())).await;
        left = rest;
    }
    if !left.is_empty() {
        ExportStats::add(&export.stats.dropped_shutdown, left.len());
        tracing::warn!(
            dropped = left.len(),
            of = total,
            "spans not exported by the shutdown deadline; dropped"
        );
    }
    let _ = export.exporter.shutdown();
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::error::OTelSdkError;

    use super::*;

    /// An exporter that answers as told: accepts, fails, or never answers.
    #[derive(Debug, Clone)]
    struct Collector {
        hang: Arc<AtomicBool>,
        fail: Arc<AtomicBool>,
        received: Arc<AtomicU64>,
    }

    impl Collector {
        fn new() -> Self {
            Self {
                hang: Arc::default(),
                fail: Arc::default(),
                received: Arc::default(),
            }
        }
    }

    impl SpanExporter for Collector {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.hang.load(Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            if self.fail.load(Ordering::Relaxed) {
                return Err(OTelSdkError::InternalFailure("connection refused".into()));
            }
            self.received
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            Ok(())
        }
    }

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(1),
                SpanId::from(1),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::UNIX_EPOCH,
            end_time: std::time::SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    fn settings() -> BatchSettings {
        BatchSettings {
            schedule_delay: Duration::from_millis(100),
            max_queue_size: 8,
            max_export_batch_size: 4,
            export_timeout: Duration::from_secs(1),
        }
    }

    fn stats() -> &'static ExportStats {
        Box::leak(Box::new(ExportStats::new()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_and_failed_exports_are_counted() {
        let collector = Collector::new();
        collector.fail.store(true, Ordering::Relaxed);
        let stats = stats();
        let (batcher, stopper) =
            Batcher::start(collector.clone(), settings(), "test".into(), stats);
        // Spans end faster than the task takes them: the queue holds
        // eight, the rest are dropped.
        for _ in 0..24 {
            batcher.on_end(span());
        }
        assert_eq!(stats.dropped("queue_full"), 16);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(stats.failures(), 2, "two batches of four, both refused");
        assert_eq!(stats.dropped("export_failed"), 8);
        assert_eq!(
            stats.problem().as_deref(),
            Some("span export to test failing: Operation failed: connection refused")
        );
        collector.fail.store(false, Ordering::Relaxed);
        batcher.on_end(span());
        stopper.stop(Duration::from_secs(5)).await;
        assert_eq!(collector.received.load(Ordering::Relaxed), 1);
        assert_eq!(stats.exported(), 1);
        assert_eq!(stats.problem(), None, "a success clears the health reason");
    }

    #[tokio::test(start_paused = true)]
    async fn a_collector_that_never_answers_cannot_hold_shutdown() {
        let collector = Collector::new();
        collector.hang.store(true, Ordering::Relaxed);
        let stats = stats();
        let settings = BatchSettings {
            export_timeout: Duration::from_secs(30),
            ..settings()
        };
        let (batcher, stopper) = Batcher::start(collector, settings, "test".into(), stats);
        for _ in 0..6 {
            batcher.on_end(span());
        }
        let started = Instant::now();
        stopper.stop(Duration::from_secs(2)).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by the stop's deadline"
        );
        // The first batch of four was cut off at the deadline; the other
        // two never went.
        assert_eq!(stats.dropped("export_failed"), 4);
        assert_eq!(stats.dropped("shutdown"), 2);
        // Spans that end after the stop are counted, not queued.
        batcher.on_end(span());
        assert_eq!(stats.dropped("shutdown"), 3);
    }
}
