//! The `gatemesh` command line, as a library so that tests drive the same
//! code as the binary (`src/bin/gatemesh.rs` in the root package).
//!
//! - [`args`]: the command line, [`Cli`], parsed by clap.
//! - [`catalogue`]: mesh methods by name, and JSON to protobuf and back,
//!   from the descriptors compiled into `gatemesh-proto`: no per-method code.
//! - [`target`]: the gateway's URL and TLS settings, from `--gateway` and
//!   `--tls-*`, checked before dialling.
//! - [`client`]: the `GatewayAdmin` connection, with the secret on every call.
//! - [`output`]: the instance table and the JSON documents printed.
//! - [`run`]: runs one parsed command; [`error_line`] says why it failed,
//!   on one line, and [`exit_code`] with which exit status.

#![forbid(unsafe_code)]

pub mod args;
pub mod catalogue;
pub mod client;
pub mod output;
pub mod target;

use std::io::{IsTerminal, Read as _, Write};

use anyhow::{Context as _, anyhow};
use clap::CommandFactory as _;
use gatemesh_handlers::Metadata;
use gatemesh_proto::pb;
use tracing::Instrument as _;

pub use args::{Cli, Command};
pub use catalogue::Catalogue;
pub use clap::Parser;
use target::Target;

/// An error and its causes on one line, `: `-separated, each said once:
/// transport errors repeat their cause's words in their own message
/// (`tcp connect error: tcp connect error`), and a message from a peer may
/// hold line breaks.
pub fn error_line(error: &anyhow::Error) -> String {
    one_line(error.chain().map(ToString::to_string))
}

/// The exit status of a command that failed with `error`, as grpcurl
/// has it: 64 + the gRPC code when a call ended with a status (`NOT_FOUND`
/// is 69, `UNAVAILABLE` 78), 1 for any other error (a gateway that cannot
/// be reached, a bad request, a file that cannot be read). A command line
/// that clap refuses exits 2 before this.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    match error.downcast_ref::<client::CallFailed>() {
        Some(failed) => 64 + failed.code as u8,
        None => 1,
    }
}

/// `error` and its sources, outermost first.
pub(crate) fn causes(mut error: Option<&(dyn std::error::Error + 'static)>) -> Vec<String> {
    let mut causes = Vec::new();
    while let Some(e) = error {
        causes.push(e.to_string());
        error = e.source();
    }
    causes
}

/// Joins `segments` with `: `, dropping one that the line already says.
pub(crate) fn one_line(segments: impl IntoIterator<Item = String>) -> String {
    let mut line = String::new();
    for segment in segments {
        let segment = segment.split_whitespace().collect::<Vec<_>>().join(" ");
        if segment.is_empty() || line.contains(&segment) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&segment);
    }
    line
}

/// The request of `call --json`: the text itself, `-` for standard input,
/// `@FILE` for a file's content.
fn request_json(arg: &str) -> anyhow::Result<String> {
    if arg == "-" {
        if std::io::stdin().is_terminal() {
            eprintln!("reading the request from standard input (end with Ctrl-D)...");
        }
        let mut json = String::new();
        std::io::stdin()
            .read_to_string(&mut json)
            .map_err(|e| anyhow!("--json -: cannot read standard input: {e}"))?;
        return Ok(json);
    }
    if let Some(path) = arg.strip_prefix('@') {
        return std::fs::read_to_string(path)
            .map_err(|e| anyhow!("--json {arg}: cannot read {path}: {e}"));
    }
    Ok(arg.to_string())
}

/// The pairs of `--header KEY=VALUE`, checked by the rules the gateway
/// applies, so a bad one is refused here with its flag named.
fn headers(args: &[String]) -> anyhow::Result<Metadata> {
    let mut metadata = Metadata::new();
    for arg in args {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| anyhow!("--header {arg}: expected KEY=VALUE"))?;
        metadata
            .insert(key, value)
            .map_err(|e| anyhow!("--header {arg}: {e}"))?;
    }
    Ok(metadata)
}

/// Runs `cli`, writing the result to `out`; feedback for a person waiting
/// goes to stderr, and only when stderr is a terminal.
pub async fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let progress = |message: &str| {
        if std::io::stderr().is_terminal() {
            eprintln!("{message}");
        }
    };
    let secret = cli.secret.as_deref().unwrap_or_default();
    match &cli.command {
        Command::Instances(args) => {
            let target = Target::from_cli(&cli)?;
            let mut client = client::AdminClient::connect(&target, secret).await?;
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
            let payload = method.encode_json(&request_json(&args.json)?)?;
            let metadata = headers(&args.headers)?;
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
            let target = Target::from_cli(&cli)?;
            let mut client = client::AdminClient::connect(&target, secret).await?;
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
                target.url
            ));
            // The root of the call's trace, when spans are exported; its
            // context travels in the gRPC headers (`traceparent`).
            let span = if gatemesh_handlers::trace::enabled() {
                tracing::info_span!(
                    "gatemesh.cli",
                    otel.kind = "client",
                    rpc.system = "grpc",
                    rpc.service = gatemesh_proto::pb::gateway_admin_server::SERVICE_NAME,
                    rpc.method = "Call",
                    method = method.name(),
                    strategy = %args.strategy,
                    rpc.grpc.status_code = tracing::field::Empty,
                    otel.status_description = tracing::field::Empty,
                )
            } else {
                tracing::Span::none()
            };
            let metadata = gatemesh_handlers::trace::outgoing(metadata, &span);
            let response = client
                .call(request, args.timeout, &metadata)
                .instrument(span.clone())
                .await;
            let (code, message) = match &response {
                Ok(_) => (tonic::Code::Ok, String::new()),
                Err(e) => (
                    e.downcast_ref::<client::CallFailed>()
                        .map_or(tonic::Code::Unknown, |s| s.code),
                    e.to_string(),
                ),
            };
            gatemesh_handlers::trace::record_code(
                &span,
                gatemesh_handlers::trace::Kind::Client,
                code,
                &message,
            );
            drop(span);
            let response = response?;
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
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "gatemesh", out);
        }
    }
    Ok(())
}
