//! `gatemesh-bench`: run with no role for the whole bench (see BENCHMARKS.md);
//! the bench re-executes itself with a role for each of its processes.

use gatemesh_bench::args::Args;
use gatemesh_bench::orchestrate::{self, Options};

const ROLES: &[&str] = &[
    "gateway",
    "instances",
    "unary-server",
    "nats-responder",
    "caller",
];

const USAGE: &str =
    "usage: gatemesh-bench [--quick] [--runs N] [--duration SECONDS] [--warmup SECONDS]
                      [--concurrency 1,64] [--instances N] [--instances-small N]
                      [--reconnect-spread-ms MS] [--no-nats] [--no-scale] [--out FILE]";

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(role) = args
        .first()
        .filter(|a| ROLES.contains(&a.as_str()))
        .cloned()
    {
        args.remove(0);
        let flags: &[&str] = if role == "nats-responder" {
            &["owner"]
        } else {
            &[]
        };
        return gatemesh_bench::roles::main(&role, Args::parse(args, flags)?);
    }
    let command_line = format!(
        "cargo run --release -p gatemesh-bench -- {}",
        args.join(" ")
    );
    let parsed = Args::parse(args, &["quick", "no-nats", "no-scale", "help"])?;
    if parsed.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    let options = Options::from_args(&parsed, command_line.trim_end().to_string())?;
    let out = options.out.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(orchestrate::run(options))?;
    println!("{report}");
    if let Some(path) = out {
        std::fs::write(&path, &report)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}
