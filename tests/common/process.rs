//! Real `vps-gateway` and `vps-service` processes for tests that need them.
//!
//! Those binaries belong to other packages, so cargo does not hand their
//! paths to this package's tests; [`binary`] builds them once per test
//! binary (a no-op when they are fresh) and finds them in the target dir.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Path of a workspace binary, built on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-exe> -> target/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // `cargo test` sets CARGO_MANIFEST_DIR, CARGO_PKG_* and friends for
        // the test; passed on, they differ from a shell build's, and build
        // scripts that watch them (ring's) run again: ~45 s per test binary.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let keep = ["CARGO_HOME", "CARGO_TARGET_DIR"].contains(&&*key)
                || key.starts_with("CARGO_BUILD_")
                || key.starts_with("CARGO_PROFILE_");
            if key.starts_with("CARGO_") && !keep {
                build.env_remove(&*key);
            }
        }
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "gatemesh-node",
            "-p",
            "gatemesh-service",
        ]);
        if release {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(
            status.success(),
            "building vps-gateway and vps-service failed"
        );
        dir
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} not found after building", path.display());
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `program` with exactly `env`, `PATH` and the test log filter
/// (`GATEMESH_TEST_LOG`, else `warn`) as `RUST_LOG`, no standard input.
pub fn command(program: impl AsRef<std::ffi::OsStr>, env: &[(&str, String)]) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "RUST_LOG",
            std::env::var("GATEMESH_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A child process killed when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn spawn(name: &str, binary: &Path, env: &[(&str, String)]) -> Self {
        Self::spawn_with(name, binary, env, None)
    }

    /// [`Proc::spawn`] with stderr (the daemons' logs) written to `log`.
    pub fn spawn_logged(name: &str, binary: &Path, env: &[(&str, String)], log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        Self::spawn_with(name, binary, env, Some(file))
    }

    fn spawn_with(
        name: &str,
        binary: &Path,
        env: &[(&str, String)],
        stderr: Option<std::fs::File>,
    ) -> Self {
        let mut command = command(binary, env);
        if let Some(file) = stderr {
            command.stderr(file);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self {
            name: name.into(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the process to exit (after a signal) and returns its status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for child")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.pid().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn gateway_env(port: u16, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("GATEWAY_API_SECRET", secret.into()),
        ("GATEWAY_BIND", "127.0.0.1".into()),
        ("GATEWAY_GRPC_PORT", port.to_string()),
        ("GATEWAY_HTTP_PORT", free_port().to_string()),
        ("GATEWAY_ID", "gw-proc".into()),
    ]
}

/// Where the operator endpoints of a gateway run with `env` (from
/// [`gateway_env`]) listen.
pub fn http_addr(env: &[(&str, String)]) -> SocketAddr {
    let port = env
        .iter()
        .find(|(k, _)| *k == "GATEWAY_HTTP_PORT")
        .expect("GATEWAY_HTTP_PORT is set")
        .1
        .parse()
        .expect("a port");
    loopback(port)
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
