//! `bench-hotpath`: gatemesh's call path beside a bare reverse call, in one
//! process and one run (see BENCHMARKS.md, "The hot path").

use gatemesh_bench::args::Args;
use gatemesh_bench::hotpath;

const USAGE: &str = "usage: bench-hotpath [--quick] [--runs N] [--duration SECONDS] [--warmup SECONDS] [--concurrency 1,64] [--only bare|gatemesh|one|three]";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command_line = format!(
        "cargo run --release -p gatemesh-bench --bin bench-hotpath -- {}",
        args.join(" ")
    );
    let parsed = Args::parse(args, &["quick", "help"])?;
    if parsed.flag("help") {
        println!("{USAGE}");
        return Ok(());
    }
    gatemesh_bench::init_logging();
    let options = hotpath::options(&parsed, command_line.trim_end().to_string())?;
    println!("{}", hotpath::run(options)?);
    Ok(())
}
