//! The processes of a bench run. Each prints a [`Ready`] line, answers
//! commands from stdin, and exits when stdin closes.
//!
//! - [`gateway`]: a gateway on loopback; also the in-process caller of the
//!   mesh, as the DHCP manager is in production.
//! - [`instances`]: N instances in one process, one link each.
//! - [`unary`]: the baseline unary gRPC server.
//! - [`nats`]: a NATS responder.
//! - [`caller`]: an external caller: admin API, unary baseline or NATS.

pub mod caller;
pub mod gateway;
pub mod instances;
pub mod nats;
pub mod unary;

use std::future::Future;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::protocol::{Command, Ready, Reply};

/// Prints the ready line.
pub fn ready(port: u16) {
    println!(
        "{}",
        serde_json::to_string(&Ready { port }).expect("serializable")
    );
}

/// Answers commands until `Quit` or the end of stdin.
pub async fn serve_commands<F, Fut>(mut handle: F) -> anyhow::Result<()>
where
    F: FnMut(Command) -> Fut,
    Fut: Future<Output = anyhow::Result<Reply>>,
{
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let command: Command = match serde_json::from_str(&line) {
            Ok(c) => c,
            Err(e) => {
                print_reply(&Reply::Error(format!("bad command {line:?}: {e}")));
                continue;
            }
        };
        if matches!(command, Command::Quit) {
            break;
        }
        let reply = handle(command)
            .await
            .unwrap_or_else(|e| Reply::Error(format!("{e:#}")));
        print_reply(&reply);
    }
    Ok(())
}

fn print_reply(reply: &Reply) {
    println!("{}", serde_json::to_string(reply).expect("serializable"));
}

/// Waits for the end of stdin: how a role that takes no commands learns
/// that the bench is over.
pub async fn until_stdin_closes() {
    let _ = serve_commands(|_| async { Ok(Reply::Done) }).await;
}

/// Runs `role` with its arguments; the entry point of every binary.
pub fn main(role: &str, args: crate::args::Args) -> anyhow::Result<()> {
    crate::init_logging();
    crate::raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match role {
            "gateway" => gateway::run(&args).await,
            "instances" => instances::run(&args).await,
            "unary-server" => unary::run(&args).await,
            "nats-responder" => nats::run(&args).await,
            "caller" => caller::run(&args).await,
            other => anyhow::bail!("unknown role {other:?}"),
        }
    })?;
    // Tasks still running (links, connections) end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}
