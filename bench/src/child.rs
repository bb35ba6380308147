//! A role running as a child process: started from this same executable,
//! stderr to a log file, commands and replies over stdin/stdout.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};

use crate::protocol::{Command, Ready, Reply};

pub struct Role {
    pub name: String,
    pub pid: u32,
    /// What the role printed first.
    pub port: u16,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Role {
    /// Starts `gatemesh-bench <args>` and waits for its ready line.
    pub async fn start(name: &str, args: &[String], log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the bench executable")?;
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .with_context(|| format!("creating the log of {name}"))?;
        Self::spawn(name, Process::new(exe).args(args).stderr(log)).await
    }

    /// Starts any program that speaks nothing on stdout (nats-server); the
    /// caller waits for its port.
    pub fn start_program(
        name: &str,
        program: &str,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Child> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        Process::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {program}"))
    }

    async fn spawn(name: &str, command: &mut Process) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id().context("child has no pid")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line())
            .await
            .with_context(|| format!("{name} did not start within 30 s"))??
            .with_context(|| format!("{name} exited before it was ready; see its log"))?;
        let ready: Ready =
            serde_json::from_str(&line).with_context(|| format!("{name} said {line:?}"))?;
        Ok(Self {
            name: name.to_string(),
            pid,
            port: ready.port,
            child,
            stdin,
            stdout,
        })
    }

    /// Sends one command and waits for its reply.
    pub async fn ask(&mut self, command: &Command) -> anyhow::Result<Reply> {
        let stdin = self.stdin.as_mut().context("stdin already closed")?;
        let mut line = serde_json::to_string(command)?;
        line.push('\n');
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await?;
        let answer = self
            .stdout
            .next_line()
            .await?
            .with_context(|| format!("{} exited; see its log", self.name))?;
        let reply: Reply = serde_json::from_str(&answer)?;
        if let Reply::Error(e) = reply {
            bail!("{}: {e}", self.name);
        }
        Ok(reply)
    }

    /// Graceful stop: `Quit`, then stdin closed; waits up to `grace`, then kills.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"{\"cmd\":\"quit\"}\n").await;
            drop(stdin);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Abrupt stop, as if the process crashed.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
