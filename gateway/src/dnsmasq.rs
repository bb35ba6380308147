//! What every file the gateway hands dnsmasq shares: an atomic write, so
//! dnsmasq reads the old file or the new one and never a mix, and the
//! SIGHUP that makes dnsmasq read them again, sent only to a process that
//! is dnsmasq. The DHCP manager's `addn-hosts` file ([`crate::dhcp::hosts`])
//! and the IP allocator's `dhcp-hostsfile` ([`crate::ipam`]) both go
//! through here.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[derive(Debug, thiserror::Error)]
pub enum DnsmasqError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read dnsmasq pid file {path}: {source}")]
    PidFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dnsmasq pid file {path} holds {content:?}, not a process id")]
    BadPid { path: PathBuf, content: String },
    /// The pid file is stale: the process it names is gone, or is not
    /// dnsmasq. SIGHUP's default action terminates a process, so it is
    /// never sent on a guess.
    #[error("dnsmasq pid file {path} names pid {pid}, which is {}; not signalled", describe(.comm))]
    NotDnsmasq {
        path: PathBuf,
        pid: i32,
        /// The process's name, `None` when no such process runs.
        comm: Option<String>,
    },
    #[error("cannot signal dnsmasq (pid {pid}): {source}")]
    Signal { pid: i32, source: nix::Error },
}

fn describe(comm: &Option<String>) -> String {
    match comm {
        Some(comm) => format!("{comm:?}, not dnsmasq"),
        None => "not running".into(),
    }
}

impl DnsmasqError {
    /// The metric label of a failed write or reload.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Write { .. } => "write",
            Self::PidFile { .. } => "pid_file",
            Self::BadPid { .. } => "bad_pid",
            Self::NotDnsmasq { .. } => "not_dnsmasq",
            Self::Signal { .. } => "signal",
        }
    }
}

/// The name the kernel gives the process, as `/proc/<pid>/comm` holds it;
/// `None` when there is no such process.
fn process_name(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|comm| comm.trim_end_matches('\n').to_string())
}

/// Replaces `path` with `content` so that a reader sees the old file or
/// the new one, never a mix: a temporary file in the same directory,
/// fsynced, renamed over the old one, then the directory fsynced.
pub fn write_atomically(path: &Path, content: &str) -> Result<(), DnsmasqError> {
    let fail = |source| DnsmasqError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("the path names no file")))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(content.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(e));
    }
    // The rename is durable once the directory is; not every filesystem
    // lets a directory be fsynced, and the file is in place either way.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Sends SIGHUP to the process named in `pid_file`, once its
/// `/proc/<pid>/comm` says it is dnsmasq; dnsmasq rereads its `addn-hosts`
/// files on it. Returns the pid signalled.
pub fn reload(pid_file: &Path) -> Result<i32, DnsmasqError> {
    let content = std::fs::read_to_string(pid_file).map_err(|source| DnsmasqError::PidFile {
        path: pid_file.to_path_buf(),
        source,
    })?;
    let pid = content
        .trim()
        .parse::<i32>()
        .ok()
        .filter(|pid| *pid > 1)
        .ok_or_else(|| DnsmasqError::BadPid {
            path: pid_file.to_path_buf(),
            content: content.chars().take(32).collect(),
        })?;
    // A window remains between this check and the signal in which the pid
    // could be reused; a pidfd would close it, but dnsmasq's pid file only
    // names a pid, and the window is microseconds against a stale file's
    // hours.
    let comm = process_name(pid);
    if comm.as_deref() != Some("dnsmasq") {
        return Err(DnsmasqError::NotDnsmasq {
            path: pid_file.to_path_buf(),
            pid,
            comm: comm.map(|c| c.chars().take(32).collect()),
        });
    }
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .map_err(|source| DnsmasqError::Signal { pid, source })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gatemesh-dnsmasq-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn writes_atomically_and_leaves_no_temporary_file() {
        let dir = dir("write");
        let path = dir.join("hosts");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hosts"]);
        let e = write_atomically(&dir.join("missing/hosts"), "x").unwrap_err();
        assert!(e.to_string().contains("missing/hosts"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn reload_failures_say_what_went_wrong() {
        let dir = dir("reload");
        let e = reload(&dir.join("none.pid")).unwrap_err();
        assert!(matches!(e, DnsmasqError::PidFile { .. }), "{e}");
        let bad = dir.join("bad.pid");
        std::fs::write(&bad, "dnsmasq\n").unwrap();
        assert!(matches!(
            reload(&bad).unwrap_err(),
            DnsmasqError::BadPid { .. }
        ));
        std::fs::write(&bad, "1\n").unwrap();
        assert!(
            matches!(reload(&bad).unwrap_err(), DnsmasqError::BadPid { .. }),
            "never signal init"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_pid_file_naming_another_process_is_never_signalled() {
        let dir = dir("foreign");
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Between fork and exec the child still bears the test thread's
        // name: wait for the exec, so the name checked is `sleep`.
        let started = std::time::Instant::now();
        while process_name(sleeper.id() as i32).as_deref() != Some("sleep") {
            assert!(started.elapsed() < std::time::Duration::from_secs(10));
            std::thread::yield_now();
        }
        let pid_file = dir.join("dnsmasq.pid");
        std::fs::write(&pid_file, format!("{}\n", sleeper.id())).unwrap();
        let e = reload(&pid_file).unwrap_err();
        assert!(
            matches!(&e, DnsmasqError::NotDnsmasq { comm: Some(c), .. } if c == "sleep"),
            "{e}"
        );
        assert_eq!(e.kind(), "not_dnsmasq");
        assert!(sleeper.try_wait().unwrap().is_none(), "sleep survives");
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        let e = reload(&pid_file).unwrap_err();
        assert!(
            matches!(&e, DnsmasqError::NotDnsmasq { comm: None, .. }),
            "a pid that is gone: {e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
