//! The bench itself: starts every party as its own process, runs each
//! scenario `runs` times, reads each process's CPU time around each run,
//! and prints a markdown report with the medians.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::args::Args;
use crate::child::Role;
use crate::load::{LoadResult, median};
use crate::procfs;
use crate::protocol::{Command, FanoutResult, Reply, Target, WaitResult};

/// What a run is asked to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: Vec<usize>,
    /// The two sizes of the memory measurement; the larger one is also the
    /// size of the restart storm and the fan-out calls.
    pub instances_small: usize,
    pub instances_large: usize,
    /// The gateways' `GATEWAY_RECONNECT_SPREAD_MS`; the default's when `None`.
    pub reconnect_spread_ms: Option<u64>,
    pub nats: bool,
    pub scale: bool,
    pub quick: bool,
    pub out: Option<PathBuf>,
    pub command_line: String,
}

impl Options {
    pub fn from_args(args: &Args, command_line: String) -> anyhow::Result<Self> {
        let quick = args.flag("quick");
        let seconds = |name: &str, default: f64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs_f64(args.get(name, default)?))
        };
        let concurrency = args.concurrency()?;
        Ok(Self {
            runs: args.get("runs", if quick { 1 } else { 3 })?.max(1),
            duration: seconds("duration", if quick { 1.0 } else { 5.0 })?,
            warmup: seconds("warmup", if quick { 0.3 } else { 1.0 })?,
            concurrency,
            instances_small: args.get("instances-small", if quick { 10 } else { 1_000 })?,
            instances_large: args.get("instances", if quick { 100 } else { 10_000 })?,
            reconnect_spread_ms: args
                .str("reconnect-spread-ms")
                .map(str::parse)
                .transpose()?,
            nats: !args.flag("no-nats"),
            scale: !args.flag("no-scale"),
            quick,
            out: args.str("out").map(PathBuf::from),
            command_line,
        })
    }
}

/// Which processes a scenario's CPU is read from.
#[derive(Debug, Clone, Default)]
struct Procs {
    /// The external caller; `None` when the gateway calls in-process.
    caller: Option<u32>,
    /// The gateway, NATS server or unary server.
    middle: Option<u32>,
    responders: Vec<u32>,
}

/// One scenario at one concurrency, every run of it.
#[derive(Debug, Clone)]
struct Point {
    name: String,
    concurrency: usize,
    /// Whether the caller is the gateway process itself.
    in_process: bool,
    middle: &'static str,
    runs: Vec<Run>,
}

#[derive(Debug, Clone)]
struct Run {
    load: LoadResult,
    /// % of one core.
    caller_cpu: f64,
    middle_cpu: f64,
    responders_cpu: f64,
    cpu_us_per_call: f64,
}

impl Point {
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(&self.runs.iter().map(f).collect::<Vec<_>>())
    }
    fn calls_per_s(&self) -> f64 {
        self.med(|r| r.load.calls_per_s)
    }
    fn p50(&self) -> f64 {
        self.med(|r| r.load.p50_us)
    }
    fn p99(&self) -> f64 {
        self.med(|r| r.load.p99_us)
    }
}

struct Bench {
    options: Options,
    log_dir: PathBuf,
    ticks: f64,
    points: Vec<Point>,
    notes: Vec<String>,
    scale: Option<Scale>,
}

#[derive(Debug, Default)]
struct Scale {
    /// (instances, gateway RSS KiB, instances' processes RSS KiB)
    memory: Vec<(usize, u64, u64)>,
    gateway_idle_kib: u64,
    fanout: FanoutResult,
    /// (label, ms from restart begin to all back, registrations by time)
    storms: Vec<(String, f64, WaitResult)>,
}

pub async fn run(options: Options) -> anyhow::Result<String> {
    let log_dir = std::env::temp_dir().join(format!("gatemesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir)?;
    let fd_limit = crate::raise_fd_limit();
    let mut bench = Bench {
        options,
        log_dir,
        ticks: gatemesh_runtime::metrics::clock_ticks_per_second(),
        points: Vec::new(),
        notes: Vec::new(),
        scale: None,
    };
    let machine = machine(fd_limit);
    eprintln!(
        "{machine}\nlogs of every process: {}",
        bench.log_dir.display()
    );
    bench.mesh().await.context("gatemesh scenarios")?;
    bench.unary().await.context("unary baseline")?;
    if bench.options.nats {
        match find_program("nats-server") {
            Some(program) => bench.nats(&program).await.context("NATS scenarios")?,
            None => bench.skip(
                "NATS skipped: `nats-server` is not on PATH (Debian: `apt-get install -y nats-server`)",
            ),
        }
    } else {
        bench.skip("NATS skipped: --no-nats");
    }
    if bench.options.scale {
        bench.scale().await.context("scale scenarios")?;
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(bench.report(&machine, load_after.trim()))
}

impl Bench {
    fn skip(&mut self, why: &str) {
        eprintln!("{why}");
        self.notes.push(why.to_string());
    }

    async fn start_gateway(&self, name: &str, args: &[String]) -> anyhow::Result<Role> {
        Role::start(name, args, &self.log_dir).await
    }

    async fn role(&self, name: &str, args: &[&str]) -> anyhow::Result<Role> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Role::start(name, &args, &self.log_dir).await
    }

    /// Warms up, then runs `target` `runs` times, reading CPU around each.
    async fn measure(
        &mut self,
        name: &str,
        driver: &mut Role,
        target: Target,
        concurrency: usize,
        procs: &Procs,
        middle: &'static str,
    ) -> anyhow::Result<()> {
        let command = |duration: Duration| Command::Run {
            target: target.clone(),
            concurrency,
            duration_ms: duration.as_millis() as u64,
        };
        driver.ask(&command(self.options.warmup)).await?;
        let mut point = Point {
            name: name.to_string(),
            concurrency,
            in_process: procs.caller.is_none(),
            middle,
            runs: Vec::new(),
        };
        for _ in 0..self.options.runs {
            let cpu =
                |pid: Option<u32>| pid.map_or(Ok(0.0), |p| procfs::cpu_seconds(p, self.ticks));
            let responders = |pids: &[u32]| -> std::io::Result<f64> {
                pids.iter()
                    .map(|&p| procfs::cpu_seconds(p, self.ticks))
                    .sum()
            };
            let before = (
                cpu(procs.caller)?,
                cpu(procs.middle)?,
                responders(&procs.responders)?,
            );
            let started = Instant::now();
            let reply = driver.ask(&command(self.options.duration)).await?;
            let wall = started.elapsed().as_secs_f64();
            let after = (
                cpu(procs.caller)?,
                cpu(procs.middle)?,
                responders(&procs.responders)?,
            );
            let Reply::Load(load) = reply else {
                bail!("{name}: unexpected reply {reply:?}");
            };
            if let Some(e) = &load.first_error {
                eprintln!(
                    "  {name} c={concurrency}: {} errors, first: {e}",
                    load.errors
                );
            }
            let used = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
            let run = Run {
                caller_cpu: used.0 / wall * 100.0,
                middle_cpu: used.1 / wall * 100.0,
                responders_cpu: used.2 / wall * 100.0,
                cpu_us_per_call: (used.0 + used.1 + used.2) / load.calls.max(1) as f64 * 1e6,
                load,
            };
            eprintln!(
                "  {name:<40} c={concurrency:<3} {:>9.0} calls/s  p50 {:>7.0} µs  p99 {:>7.0} µs  cpu {:.0}/{:.0}/{:.0}%",
                run.load.calls_per_s,
                run.load.p50_us,
                run.load.p99_us,
                run.caller_cpu,
                run.middle_cpu,
                run.responders_cpu
            );
            point.runs.push(run);
        }
        self.points.push(point);
        Ok(())
    }

    /// Scenarios 1 and 2: the reverse call in the gateway, and the same
    /// calls through the admin API from another process.
    async fn mesh(&mut self) -> anyhow::Result<()> {
        eprintln!("gatemesh: a gateway, three instance processes");
        let mut gateway = self.role("gateway", &["gateway"]).await?;
        let url = format!("http://127.0.0.1:{}", gateway.port);
        let mut instances = Vec::new();
        for i in 0..3 {
            let prefix = format!("bench{i}");
            let mut args = vec![
                "instances",
                "--url",
                &url,
                "--count",
                "1",
                "--prefix",
                &prefix,
            ];
            if i == 0 {
                args.extend(["--owner", "0"]);
            }
            instances.push(self.role(&format!("instance-{i}"), &args).await?);
        }
        wait(&mut gateway, 3, Duration::from_secs(30)).await?;
        let owner = "bench0-0".to_string();
        let one = Procs {
            caller: None,
            middle: Some(gateway.pid),
            responders: vec![instances[0].pid],
        };
        let three = Procs {
            responders: instances.iter().map(|i| i.pid).collect(),
            ..one.clone()
        };
        for &c in &self.options.concurrency.clone() {
            self.measure(
                "gatemesh reverse call, one instance",
                &mut gateway,
                Target::MeshTo(owner.clone()),
                c,
                &one,
                "gateway",
            )
            .await?;
        }
        for &c in &self.options.concurrency.clone() {
            self.measure(
                "gatemesh first_valid, three instances",
                &mut gateway,
                Target::MeshFirstValid,
                c,
                &three,
                "gateway",
            )
            .await?;
        }
        // The admin API, then any gRPC client calling the method itself on
        // the gateway's port.
        let external = [
            (
                "admin",
                "admin API Call, one instance",
                Target::AdminTo(owner.clone()),
                "admin API Call first_valid, three instances",
                Target::AdminFirstValid,
            ),
            (
                "plain",
                "plain gRPC FindVPSByLease via the gateway, one instance",
                Target::PlainTo(owner.clone()),
                "plain gRPC FindVPSByLease first_valid, three instances",
                Target::PlainFirstValid,
            ),
        ];
        for (kind, to_label, to, first_label, first) in external {
            let mut caller = self
                .role(
                    &format!("caller-{kind}"),
                    &["caller", "--kind", kind, "--url", &url],
                )
                .await?;
            let via = |p: &Procs| Procs {
                caller: Some(caller.pid),
                ..p.clone()
            };
            let (one, three) = (via(&one), via(&three));
            for (label, target, procs) in [(to_label, to, &one), (first_label, first, &three)] {
                for &c in &self.options.concurrency.clone() {
                    self.measure(label, &mut caller, target.clone(), c, procs, "gateway")
                        .await?;
                }
            }
            caller.stop(Duration::from_secs(2)).await;
        }
        gateway.stop(Duration::from_secs(10)).await;
        for i in instances {
            i.stop(Duration::from_secs(2)).await;
        }
        Ok(())
    }

    /// Scenario 3: the direct unary call, one channel and four.
    async fn unary(&mut self) -> anyhow::Result<()> {
        eprintln!("unary baseline: one server process");
        let server = self.role("unary-server", &["unary-server"]).await?;
        let url = format!("http://127.0.0.1:{}", server.port);
        for channels in ["1", "4"] {
            let mut caller = self
                .role(
                    &format!("caller-unary-{channels}"),
                    &[
                        "caller",
                        "--kind",
                        "unary",
                        "--url",
                        &url,
                        "--channels",
                        channels,
                    ],
                )
                .await?;
            let procs = Procs {
                caller: Some(caller.pid),
                middle: Some(server.pid),
                responders: Vec::new(),
            };
            let s = if channels == "1" { "" } else { "s" };
            for &c in &self.options.concurrency.clone() {
                self.measure(
                    &format!("direct unary gRPC, {channels} channel{s}"),
                    &mut caller,
                    Target::Unary,
                    c,
                    &procs,
                    "server",
                )
                .await?;
            }
            caller.stop(Duration::from_secs(2)).await;
        }
        server.stop(Duration::from_secs(2)).await;
        Ok(())
    }

    /// Scenario 4: NATS request-reply, one responder and three.
    async fn nats(&mut self, program: &Path) -> anyhow::Result<()> {
        eprintln!("NATS: {} and responder processes", program.display());
        let port = free_port()?;
        let mut server = Role::start_program(
            "nats-server",
            &program.to_string_lossy(),
            &[
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            &self.log_dir,
        )?;
        let nats_pid = server.id().context("nats-server has no pid")?;
        let until = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > until {
                bail!("nats-server did not listen on {port} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("nats://127.0.0.1:{port}");
        let result = async {
            let mut responders = vec![
                self.role(
                    "nats-responder-0",
                    &["nats-responder", "--url", &url, "--owner"],
                )
                .await?,
            ];
            let mut caller = self
                .role("caller-nats", &["caller", "--kind", "nats", "--url", &url])
                .await?;
            for count in [1, 3] {
                while responders.len() < count {
                    let name = format!("nats-responder-{}", responders.len());
                    responders.push(self.role(&name, &["nats-responder", "--url", &url]).await?);
                }
                let procs = Procs {
                    caller: Some(caller.pid),
                    middle: Some(nats_pid),
                    responders: responders.iter().map(|r| r.pid).collect(),
                };
                let name = if count == 1 {
                    "NATS request-reply, one responder".to_string()
                } else {
                    format!("NATS request-reply, {count} responders")
                };
                for &c in &self.options.concurrency.clone() {
                    self.measure(&name, &mut caller, Target::Nats, c, &procs, "nats-server")
                        .await?;
                }
            }
            caller.stop(Duration::from_secs(2)).await;
            for r in responders {
                r.stop(Duration::from_secs(2)).await;
            }
            anyhow::Ok(())
        }
        .await;
        let _ = server.kill().await;
        result
    }

    /// Scenarios 5, 6 and 7: memory per idle instance, the restart storm,
    /// and fan-out calls across every instance.
    async fn scale(&mut self) -> anyhow::Result<()> {
        let (small, large) = (self.options.instances_small, self.options.instances_large);
        eprintln!("scale: a fresh gateway, {small} then {large} instances");
        let mut scale = Scale::default();
        let spread = self.options.reconnect_spread_ms.map(|ms| ms.to_string());
        let gateway_args = |port: Option<&str>| -> Vec<String> {
            let mut args = vec!["gateway".to_string()];
            if let Some(port) = port {
                args.extend(["--port".to_string(), port.to_string()]);
            }
            if let Some(spread) = &spread {
                args.extend(["--reconnect-spread-ms".to_string(), spread.clone()]);
            }
            args
        };
        let mut gateway = Role::start("gateway-scale", &gateway_args(None), &self.log_dir).await?;
        let port = gateway.port.to_string();
        let url = format!("http://127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        scale.gateway_idle_kib = procfs::rss_kib(gateway.pid)?;
        let mut instances = Vec::new();
        let mut registered = 0;
        for (i, size) in [small, large].into_iter().enumerate() {
            let count = (size - registered).to_string();
            let prefix = format!("scale{i}");
            let mut args = vec![
                "instances",
                "--url",
                &url,
                "--count",
                &count,
                "--prefix",
                &prefix,
            ];
            if i == 0 {
                // The lease's owner sits in the middle of the crowd.
                args.extend(["--owner", "0"]);
            }
            instances.push(self.role(&format!("instances-scale-{i}"), &args).await?);
            let w = wait(&mut gateway, size, Duration::from_secs(120)).await?;
            registered = w.count;
            eprintln!("  {size} instances registered in {:.1} s", w.ms / 1e3);
            // Let connections settle (HTTP/2 windows, first pings).
            tokio::time::sleep(if self.options.quick {
                self.options.warmup
            } else {
                Duration::from_secs(3)
            })
            .await;
            let instance_rss: u64 = instances
                .iter()
                .map(|r| procfs::rss_kib(r.pid).unwrap_or(0))
                .sum();
            scale
                .memory
                .push((size, procfs::rss_kib(gateway.pid)?, instance_rss));
        }

        let runs = self.options.runs.max(3);
        let Reply::Fanout(fanout) = gateway.ask(&Command::Fanout { runs }).await? else {
            bail!("unexpected reply to fanout");
        };
        eprintln!(
            "  fan-out across {}: first_valid {:.1} ms, all {:.1} ms ({} answered)",
            fanout.instances,
            median(&fanout.first_valid_ms),
            median(&fanout.all_ms),
            fanout.all_answered
        );
        scale.fanout = fanout;

        // A graceful restart: drain, go-away with a spread, new process.
        let started = Instant::now();
        gateway.stop(Duration::from_secs(20)).await;
        let mut gateway = self
            .start_gateway("gateway-restarted", &gateway_args(Some(&port)))
            .await?;
        let up = started.elapsed().as_secs_f64() * 1e3;
        let w = watch(&mut gateway, large).await?;
        eprintln!(
            "  graceful restart: {large} back {:.1} s after the restart began",
            (up + w.ms) / 1e3
        );
        scale
            .storms
            .push(("graceful restart (drain, go-away)".into(), up + w.ms, w));

        // Restarts in production are not seconds apart: let every link stay
        // up long enough that its backoff resets (30 s), or the crash would
        // start from the ceilings the previous storm left.
        if !self.options.quick {
            eprintln!("  waiting 31 s for the instances' backoff to reset");
            tokio::time::sleep(Duration::from_secs(31)).await;
        }
        // A crash: the process is killed, the instances find out themselves.
        let started = Instant::now();
        gateway.kill().await;
        let mut gateway = self
            .start_gateway("gateway-after-crash", &gateway_args(Some(&port)))
            .await?;
        let up = started.elapsed().as_secs_f64() * 1e3;
        let w = watch(&mut gateway, large).await?;
        eprintln!(
            "  crash restart: {large} back {:.1} s after the kill",
            (up + w.ms) / 1e3
        );
        scale
            .storms
            .push(("crash (SIGKILL), new process".into(), up + w.ms, w));

        gateway.stop(Duration::from_secs(20)).await;
        for i in instances {
            i.stop(Duration::from_secs(5)).await;
        }
        self.scale = Some(scale);
        Ok(())
    }

    fn find(&self, name: &str, concurrency: usize) -> Option<&Point> {
        self.points
            .iter()
            .find(|p| p.name == name && p.concurrency == concurrency)
    }

    fn report(&self, machine: &str, load_after: &str) -> String {
        let mut out = String::new();
        let o = &self.options;
        let _ = writeln!(out, "Command:\n\n```sh\n{}\n```\n", o.command_line);
        let _ = writeln!(
            out,
            "Machine:\n\n```\n{machine}\nload average after: {load_after}\n```\n"
        );
        let _ = writeln!(
            out,
            "Each figure is the median of {} run(s) of {:.1} s after a {:.1} s warm-up; \
             CPU is % of one core, read from /proc/<pid>/stat around each run.\n",
            o.runs,
            o.duration.as_secs_f64(),
            o.warmup.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "| scenario | conc | calls/s | p50 µs | p99 µs | errors | CPU caller | CPU gateway / broker / server | CPU responders | CPU µs per call (all) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for p in &self.points {
            let caller = if p.in_process {
                "(in gateway)".to_string()
            } else {
                format!("{:.0}%", p.med(|r| r.caller_cpu))
            };
            let responders = if p.middle == "server" {
                "—".to_string()
            } else {
                format!("{:.0}%", p.med(|r| r.responders_cpu))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {:.0}% ({}) | {} | {:.1} |",
                p.name,
                p.concurrency,
                p.calls_per_s(),
                p.p50(),
                p.p99(),
                p.runs.iter().map(|r| r.load.errors).sum::<u64>(),
                caller,
                p.med(|r| r.middle_cpu),
                p.middle,
                responders,
                p.med(|r| r.cpu_us_per_call),
            );
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n{note}");
        }
        if let Some(scale) = &self.scale {
            self.report_scale(&mut out, scale);
        }
        self.report_targets(&mut out);
        out
    }

    fn report_scale(&self, out: &mut String, scale: &Scale) {
        let _ = writeln!(
            out,
            "\nMemory per registered idle instance (gateway RSS, VmRSS; idle gateway {:.1} MiB):\n",
            scale.gateway_idle_kib as f64 / 1024.0
        );
        let _ = writeln!(
            out,
            "| instances | gateway RSS | gateway per instance | instance processes' RSS per instance |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|");
        for &(n, rss, inst) in &scale.memory {
            let _ = writeln!(
                out,
                "| {n} | {:.1} MiB | {:.1} KiB | {:.1} KiB |",
                rss as f64 / 1024.0,
                (rss.saturating_sub(scale.gateway_idle_kib)) as f64 / n as f64,
                inst as f64 / n as f64
            );
        }
        let f = &scale.fanout;
        let _ = writeln!(
            out,
            "\nFan-out across {} instances (one holds the lease), {} calls each:\n",
            f.instances,
            f.first_valid_ms.len()
        );
        let _ = writeln!(out, "| call | median | min | max |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (name, v) in [("first_valid", &f.first_valid_ms), ("all", &f.all_ms)] {
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "| {name} | {:.1} ms | {min:.1} ms | {max:.1} ms |",
                median(v)
            );
        }
        let _ = writeln!(
            out,
            "\n`all` answered by {} of {} instances.",
            f.all_answered, f.instances
        );
        if let Some(e) = &f.first_error {
            let _ = writeln!(out, "First error: {e}");
        }
        for (label, total_ms, w) in &scale.storms {
            let _ = writeln!(
                out,
                "\nRestart storm, {label}: {} of {} instances back {:.2} s after the restart began \
                 ({:.2} s after the new gateway listened). Registrations by time since it listened:\n",
                w.count,
                self.options.instances_large,
                total_ms / 1e3,
                w.ms / 1e3
            );
            let _ = writeln!(
                out,
                "Back: 50% at {:.2} s, 99% at {:.2} s, 99.9% at {:.2} s, all at {:.2} s after it listened.\n",
                reached_at(&w.samples, 0.5) / 1e3,
                reached_at(&w.samples, 0.99) / 1e3,
                reached_at(&w.samples, 0.999) / 1e3,
                w.ms / 1e3
            );
            let _ = writeln!(out, "```\n{}```", histogram(&w.samples, w.ms));
        }
    }

    fn report_targets(&self, out: &mut String) {
        let _ = writeln!(out, "\nTargets:\n");
        let c_hi = self.options.concurrency.iter().copied().max().unwrap_or(64);
        let c_lo = self.options.concurrency.iter().copied().min().unwrap_or(1);
        let one = "gatemesh reverse call, one instance";
        let fv = "gatemesh first_valid, three instances";
        let unary = "direct unary gRPC, 1 channel";
        let nats3 = "NATS request-reply, 3 responders";
        let nats1 = "NATS request-reply, one responder";
        let verdict = |ok: bool| if ok { "**met**" } else { "**not met**" };
        if let (Some(a), Some(b)) = (self.find(one, c_hi), self.find(unary, c_hi)) {
            let x = a.calls_per_s() / b.calls_per_s();
            let _ = writeln!(
                out,
                "- reverse call to one instance at c={c_hi}: {x:.2}× the direct unary call on one channel (target ≥ 5×): {}",
                verdict(x >= 5.0)
            );
        }
        if let (Some(a), Some(b)) = (self.find(fv, c_hi), self.find(nats3, c_hi)) {
            let x = a.calls_per_s() / b.calls_per_s();
            let _ = writeln!(
                out,
                "- first_valid across three at c={c_hi}: {x:.2}× NATS with three responders (target ≥ 3×): {}; p99 {:.0} µs vs {:.0} µs (target lower): {}",
                verdict(x >= 3.0),
                a.p99(),
                b.p99(),
                verdict(a.p99() < b.p99())
            );
        }
        let p50 = |name: &str| self.find(name, c_lo).map(Point::p50);
        if let (Some(g), Some(u)) = (p50(one), p50(unary)) {
            let n = p50(nats1).unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "- c={c_lo} p50: reverse call {g:.0} µs vs direct unary {u:.0} µs and NATS {n:.0} µs (target below both): {}",
                verdict(g < u && (n.is_nan() || g < n))
            );
        }
        if let (Some(g), Some(n)) = (p50(fv), p50(nats3)) {
            let _ = writeln!(
                out,
                "- c={c_lo} p50: first_valid across three {g:.0} µs vs NATS with three responders {n:.0} µs: {}",
                verdict(g < n)
            );
        }
        if let Some(scale) = &self.scale
            && let Some(&(n, rss, _)) = scale.memory.last()
        {
            let per = rss.saturating_sub(scale.gateway_idle_kib) as f64 / n as f64;
            let _ = writeln!(
                out,
                "- gateway memory per idle instance at {n}: {per:.1} KiB (target ≤ 24 KiB): {}",
                verdict(per <= 24.0)
            );
            for (label, total_ms, w) in &scale.storms {
                let ok = w.reached && *total_ms <= 15_000.0;
                let _ = writeln!(
                    out,
                    "- {n} instances back after a {label}: {:.2} s (target ≤ 15 s): {}",
                    total_ms / 1e3,
                    verdict(ok)
                );
            }
        }
    }
}

async fn wait(gateway: &mut Role, count: usize, timeout: Duration) -> anyhow::Result<WaitResult> {
    let reply = gateway
        .ask(&Command::Wait {
            count,
            timeout_ms: timeout.as_millis() as u64,
        })
        .await?;
    match reply {
        Reply::Wait(w) if w.reached => Ok(w),
        Reply::Wait(w) => bail!(
            "only {} of {count} instances registered within {timeout:?}",
            w.count
        ),
        other => bail!("unexpected reply {other:?}"),
    }
}

async fn watch(gateway: &mut Role, count: usize) -> anyhow::Result<WaitResult> {
    match gateway
        .ask(&Command::Watch {
            count,
            timeout_ms: 120_000,
        })
        .await?
    {
        Reply::Wait(w) => Ok(w),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// When the count first reached `share` of the final count, in ms.
fn reached_at(samples: &[(f64, usize)], share: f64) -> f64 {
    let last = samples.last().map_or(0, |&(_, n)| n);
    let goal = (last as f64 * share).ceil() as usize;
    samples
        .iter()
        .find(|&&(_, n)| n >= goal)
        .map_or(f64::NAN, |&(t, _)| t)
}

/// Registrations per time bucket, as text bars.
fn histogram(samples: &[(f64, usize)], total_ms: f64) -> String {
    let bucket = ((total_ms / 20.0 / 50.0).ceil() * 50.0).max(50.0);
    let buckets = (total_ms / bucket).ceil().max(1.0) as usize;
    let mut counts = vec![0usize; buckets];
    let mut last = 0;
    for &(t, n) in samples {
        let i = ((t / bucket) as usize).min(buckets - 1);
        counts[i] += n.saturating_sub(last);
        last = n;
    }
    let max = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut text = String::new();
    for (i, &c) in counts.iter().enumerate() {
        let bar = "#".repeat((c * 50).div_ceil(max));
        let _ = writeln!(
            text,
            "{:>6.2}–{:<6.2} s {c:>6} {bar}",
            i as f64 * bucket / 1e3,
            (i + 1) as f64 * bucket / 1e3
        );
    }
    text
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `program` on PATH, or in the sbin directories Debian installs daemons to.
fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// nproc, CPU model, kernel, rustc, load, date.
fn machine(fd_limit: u64) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dirty = command_output("git", &["status", "--porcelain", "--untracked-files=no"])
        .lines()
        .filter(|l| !l.trim().is_empty() && *l != "unknown")
        .count();
    format!(
        "date: {}\ncommit: {} ({dirty} tracked files with uncommitted changes)\nnproc: {nproc}\ncpu: {model}\nkernel: {}\nrustc: {}\nopen files limit: {fd_limit}\nload average before: {}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        kernel.trim(),
        command_output("rustc", &["--version"]),
        load.trim()
    )
}
