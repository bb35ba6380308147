//! The SIGHUP that makes dnsmasq read its files again (`addn-hosts`,
//! `dhcp-hostsfile`), sent only to a process that is dnsmasq: a pid file
//! outlives its process, and SIGHUP's default action ends whatever process
//! now holds that pid.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::DnsmasqError;

/// The name the kernel gives the process, as `/proc/<pid>/comm` holds it;
/// `None` when there is no such process.
pub(crate) fn process_name(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|comm| comm.trim_end_matches('\n').to_string())
}

/// Sends SIGHUP to the process named in `pid_file`, once its
/// `/proc/<pid>/comm` says it is dnsmasq; dnsmasq rereads its `addn-hosts`
/// and `dhcp-hostsfile` files on it. Returns the pid signalled.
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
    use crate::write::tests::TestDir;

    #[test]
    fn reload_failures_say_what_went_wrong() {
        let dir = TestDir::new("reload");
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
    }

    #[test]
    fn a_pid_file_naming_another_process_is_never_signalled() {
        let dir = TestDir::new("foreign");
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
    }
}
