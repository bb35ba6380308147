//! The `gatemesh` command line, as a library so that tests drive the same
//! code as the binary (`src/bin/gatemesh.rs` in the root package).
//!
//! - [`args`]: the command line, [`Cli`], parsed by clap.
//! - [`catalogue`]: mesh methods by name, and JSON to protobuf and back,
//!   from the descriptors compiled into `gatemesh-proto`: no per-method code.
//! - [`client`]: the `GatewayAdmin` connection, with the secret on every call.
//! - [`output`]: the instance table and the JSON documents printed.
//! - [`run`]: runs one parsed command.

#![forbid(unsafe_code)]

pub mod args;
pub mod catalogue;
pub mod client;
pub mod output;

use std::io::{IsTerminal, Write};

use anyhow::Context as _;
use gatemesh_proto::pb;

pub use args::{Cli, Command};
pub use catalogue::Catalogue;
pub use clap::Parser;

/// Runs `cli`, writing the result to `out`; feedback for a person waiting
/// goes to stderr, and only when stderr is a terminal.
pub async fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let progress = |message: &str| {
        if std::io::stderr().is_terminal() {
            eprintln!("{message}");
        }
    };
    match cli.command {
        Command::Instances(args) => {
            let mut client = client::AdminClient::connect(
                &cli.gateway,
                cli.secret.as_deref().unwrap_or_default(),
            )
            .await?;
            let instances = client.list_instances().await?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &output::instances_json(&instances))?;
                writeln!(out)?;
            } else {
                out.write_all(
                    output::instances_table(&instances, std::time::SystemTime::now()).as_bytes(),
                )?;
            }
        }
        Command::Call(args) => {
            let catalogue = Catalogue::load()?;
            let method = catalogue.method(&args.method)?;
            let payload = method.encode_json(&args.json)?;
            let request = pb::CallRequest {
                method: method.name().to_string(),
                payload: payload.into(),
                strategy: pb::Strategy::from(args.strategy) as i32,
                instance_id: args.instance.clone().unwrap_or_default(),
                environment: args.env.clone().unwrap_or_default(),
                timeout_ms: args
                    .timeout
                    .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1))
                    .unwrap_or(0),
            };
            let mut client = client::AdminClient::connect(
                &cli.gateway,
                cli.secret.as_deref().unwrap_or_default(),
            )
            .await?;
            progress(&format!(
                "calling {} ({}{}{}) via {}...",
                method.name(),
                args.strategy,
                args.env
                    .as_deref()
                    .map(|e| format!(", env {e}"))
                    .unwrap_or_default(),
                args.instance
                    .as_deref()
                    .map(|i| format!(", instance {i}"))
                    .unwrap_or_default(),
                cli.gateway
            ));
            let response = client.call(request, args.timeout).await?;
            let document = output::call_json(&method, args.strategy, &response)
                .context("cannot show the answer")?;
            serde_json::to_writer_pretty(&mut *out, &document)?;
            writeln!(out)?;
        }
        Command::Methods => {
            let catalogue = Catalogue::load()?;
            for method in catalogue.methods() {
                writeln!(
                    out,
                    "{}\t{} -> {}\t{}",
                    method.name(),
                    method.input_name(),
                    method.output_name(),
                    method.served_by()
                )?;
            }
        }
    }
    Ok(())
}
