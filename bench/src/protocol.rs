//! The orchestrator talks to each role over its stdin and stdout: one JSON
//! command per line in, one JSON reply per line out. Every role first prints
//! a [`Ready`] line, and exits when its stdin closes, so no process outlives
//! the bench.

use serde::{Deserialize, Serialize};

use crate::load::LoadResult;

/// The first line every role prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// The port it listens on; 0 when it listens on none.
    pub port: u16,
}

/// What a calling role is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Closed-loop load on a target.
    Run {
        target: Target,
        concurrency: usize,
        duration_ms: u64,
    },
    /// Gateway: wait until `count` instances are registered.
    Wait { count: usize, timeout_ms: u64 },
    /// Gateway: like `Wait`, and report when each registration happened,
    /// counted from the moment this gateway started listening.
    Watch { count: usize, timeout_ms: u64 },
    /// Gateway: `first_valid` and `all` calls across every instance.
    Fanout { runs: usize },
    /// Stop gracefully (the gateway drains and sends go-away).
    Quit,
}

/// Who a `Run` calls, and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// In the gateway: `mesh.call(..).to(instance)`.
    MeshTo(String),
    /// In the gateway: `mesh.call(..).first_valid()`.
    MeshFirstValid,
    /// External caller: `GatewayAdmin.Call` naming one instance.
    AdminTo(String),
    /// External caller: `GatewayAdmin.Call` with `FIRST_VALID`.
    AdminFirstValid,
    /// External caller: the method as plain gRPC on the gateway's port,
    /// `gatemesh-instance` naming one instance.
    PlainTo(String),
    /// External caller: the method as plain gRPC, `first_valid`.
    PlainFirstValid,
    /// External caller: the unary baseline.
    Unary,
    /// External caller: NATS request-reply.
    Nats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WaitResult {
    pub count: usize,
    pub reached: bool,
    /// Since the command (`Wait`) or since listening (`Watch`).
    pub ms: f64,
    /// `Watch`: (ms since listening, instances registered) at every change.
    pub samples: Vec<(f64, usize)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutResult {
    pub instances: usize,
    pub first_valid_ms: Vec<f64>,
    pub all_ms: Vec<f64>,
    /// Answers (valid or not mine) in the last `all` call.
    pub all_answered: usize,
    pub first_error: Option<String>,
}

/// A role's answer to one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Load(LoadResult),
    Wait(WaitResult),
    Fanout(FanoutResult),
    Done,
    Error(String),
}
