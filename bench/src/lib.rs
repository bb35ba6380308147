//! `gatemesh-bench`: gatemesh measured side by side with a direct unary
//! gRPC call and NATS request-reply, on loopback, in one run.
//!
//! The command is an orchestrator that starts every other party as a
//! separate process (itself, re-executed with a role), so each process's CPU
//! can be read from `/proc` and the instances never share a process with the
//! gateway.
//!
//! - [`pb`]: the baseline unary service (`bench.proto`), carrying gatemesh's
//!   own `FindVPSByLease` messages.
//! - [`payload`]: the request every scenario sends and the inventories that
//!   answer it.
//! - [`load`]: closed-loop load at a fixed concurrency, latency percentiles.
//! - [`protocol`]: the line protocol between the orchestrator and its roles.
//! - [`roles`]: the processes: gateway, instances, unary server, NATS
//!   responder, and the external callers (admin API, unary, NATS).
//! - [`procfs`]: CPU time and resident memory of a process.
//! - [`child`]: starting a role and talking to it.
//! - [`orchestrate`]: the scenarios, their repetitions and the report.
//! - [`bare`], [`hotpath`]: the bare reverse call, and `bench-hotpath`,
//!   which runs it beside gatemesh's call path in one process.
//! - [`args`]: a tiny `--key value` parser (no CLI framework for a bench).

#![forbid(unsafe_code)]

pub mod args;
pub mod bare;
pub mod child;
pub mod hotpath;
pub mod load;
pub mod orchestrate;
pub mod payload;
pub mod procfs;
pub mod protocol;
pub mod roles;

/// Generated code of `bench.proto`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("gatemesh.bench");
}

/// Shared secret of every gateway the bench starts.
pub const SECRET: &str = "bench-secret";

/// Logs of a role go to its stderr (a file per process); `BENCH_LOG`
/// filters them, errors only by default.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BENCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Raises this process's open-file soft limit to its hard limit: a gateway
/// or an instances process holds one socket per instance.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
