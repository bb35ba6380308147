//! The command line.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gatemesh_proto::pb;

/// Operate a gatemesh gateway: list its instances, call any mesh method.
#[derive(Debug, Parser)]
#[command(name = "gatemesh", version, about)]
pub struct Cli {
    /// The gateway's gRPC address: a URL (http:// or https://), or host[:port],
    /// which means https:// when a TLS flag is given, else http://, and port 1537.
    #[arg(
        long,
        global = true,
        env = "GATEMESH_GATEWAY",
        default_value = "http://127.0.0.1:1537",
        value_name = "URL"
    )]
    pub gateway: String,
    /// CA certificate(s) (PEM) that sign the gateway's certificate; the
    /// system's roots when unset.
    #[arg(long, global = true, env = "GATEMESH_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for an mTLS gateway; with --tls-key.
    #[arg(long, global = true, env = "GATEMESH_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "GATEMESH_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// The gateway's shared secret.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_API_SECRET",
        hide_env_values = true
    )]
    pub secret: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the instances connected to the gateway.
    Instances(InstancesArgs),
    /// Invoke a method on the mesh with a JSON request; print the answer(s) as JSON.
    Call(CallArgs),
    /// List the methods this build knows, with their request and response types.
    Methods,
    /// Print a shell completion script, e.g. `source <(gatemesh completions bash)`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct InstancesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method's name, e.g. FindVPSByLease (`gatemesh methods` lists them).
    pub method: String,
    /// The request as JSON, e.g. '{"ip":"10.0.0.5","mac":"52:54:00:12:34:56"}';
    /// `-` reads it from standard input, `@FILE` from a file.
    #[arg(long, default_value = "{}", value_name = "JSON|-|@FILE")]
    pub json: String,
    /// How the gateway picks instances and answers.
    #[arg(long, value_enum, default_value_t = StrategyArg::FirstValid)]
    pub strategy: StrategyArg,
    /// Only this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Only instances with this environment label.
    #[arg(long, value_name = "LABEL")]
    pub env: Option<String>,
    /// Deadline of the call, e.g. 500ms, 2s, 1m (the gateway's default when
    /// unset); at most 49 days, the longest a call carries.
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Metadata for the handlers, e.g. x-request-id=42 (repeatable): sent
    /// as the call's gRPC headers, passed on by the gateway with each
    /// request.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
}

/// The longest deadline a call carries: its `timeout_ms` is a `u32`.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);

/// `--timeout`: a duration (`500ms`, `1m 30s`) no longer than
/// [`MAX_TIMEOUT`], so that the call's `timeout_ms` and its gRPC deadline
/// header both hold it.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout > MAX_TIMEOUT {
        return Err(format!(
            "at most {}ms, about 49 days (the longest deadline a call carries)",
            MAX_TIMEOUT.as_millis()
        ));
    }
    Ok(timeout)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    /// Every serving instance; the first valid answer wins.
    #[value(name = "first_valid", alias = "first-valid")]
    FirstValid,
    /// Every serving instance; one result each.
    All,
    /// One instance, the least busy; retried elsewhere if it disconnects.
    One,
}

impl From<StrategyArg> for pb::Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::FirstValid => pb::Strategy::FirstValid,
            StrategyArg::All => pb::Strategy::All,
            StrategyArg::One => pb::Strategy::One,
        }
    }
}

impl fmt::Display for StrategyArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FirstValid => "first_valid",
            Self::All => "all",
            Self::One => "one",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn call_flags_parse() {
        let cli = Cli::try_parse_from([
            "gatemesh",
            "call",
            "FindVPSByLease",
            "--json",
            "{}",
            "--strategy",
            "all",
            "--env",
            "prod",
            "--timeout",
            "1m 30s",
            "--gateway",
            "http://gw:1",
            "--secret",
            "s",
        ])
        .unwrap();
        let Command::Call(call) = cli.command else {
            panic!("not a call")
        };
        assert_eq!(call.strategy, StrategyArg::All);
        assert_eq!(call.timeout, Some(Duration::from_secs(90)));
        assert_eq!(call.env.as_deref(), Some("prod"));
        assert_eq!(cli.gateway, "http://gw:1");
        let bad = Cli::try_parse_from(["gatemesh", "call", "M", "--timeout", "soon"]).unwrap_err();
        assert!(bad.to_string().contains("--timeout"), "{bad}");
        // Past what a call carries: a usage error, not a panic when the
        // deadline is put in the request.
        let long =
            Cli::try_parse_from(["gatemesh", "call", "M", "--timeout", "100000000h"]).unwrap_err();
        assert_eq!(long.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(
            long.to_string().contains("--timeout")
                && long.to_string().contains("at most 4294967295ms"),
            "{long}"
        );
        let longest =
            Cli::try_parse_from(["gatemesh", "call", "M", "--timeout", "49days"]).unwrap();
        let Command::Call(call) = longest.command else {
            panic!("not a call")
        };
        assert_eq!(call.timeout, Some(Duration::from_secs(49 * 86_400)));
    }
}
