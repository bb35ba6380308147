//! The file-descriptor limit. Every instance stream, HTTP scrape and
//! client call holds a descriptor; systemd's default soft limit (1024)
//! would cap a gateway near a thousand instances, so both binaries raise
//! the soft limit to the hard one at start, and report how close they are
//! to it in `/health` and `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Share of the limit in use past which `/health` turns degraded.
pub const PRESSURE_PERCENT: u64 = 90;

/// The soft and hard `RLIMIT_NOFILE` after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before it was raised.
    pub was: u64,
}

/// Raises the soft descriptor limit to the hard one. An unlimited hard
/// limit is capped at the kernel's `fs.nr_open`, the most `setrlimit`
/// accepts.
pub fn raise_fd_limit() -> Result<FdLimit, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == nix::sys::resource::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        hard
    };
    if target > soft {
        setrlimit(Resource::RLIMIT_NOFILE, target, hard)?;
    }
    let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(FdLimit {
        soft: now,
        hard,
        was: soft,
    })
}

/// The soft descriptor limit in force now.
pub fn fd_limit() -> Option<u64> {
    getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Descriptors this process holds now (entries of `/proc/self/fd`).
pub fn open_fds() -> Option<u64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // read_dir's own descriptor is listed too.
    Some((dir.count() as u64).saturating_sub(1))
}

/// Why the process is short of descriptors, when it is: a `/health`
/// reason. Logged once when it starts and once when it ends.
pub fn fd_pressure() -> Option<String> {
    static SHORT: AtomicBool = AtomicBool::new(false);
    let (open, limit) = (open_fds()?, fd_limit()?);
    let short = open * 100 >= limit * PRESSURE_PERCENT;
    if SHORT.swap(short, Ordering::Relaxed) != short {
        if short {
            tracing::warn!(open, limit, "running out of file descriptors");
        } else {
            tracing::info!(open, limit, "file descriptors available again");
        }
    }
    short.then(|| format!("{open} of {limit} file descriptors open"))
}

/// [`raise_fd_limit`], logged: what both binaries do at start.
pub fn raise_fd_limit_logged() {
    match raise_fd_limit() {
        Ok(limit) => tracing::info!(
            soft = limit.soft,
            hard = limit.hard,
            was = limit.was,
            "file descriptor limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_reaches_the_hard_one_and_open_descriptors_are_counted() {
        let limit = raise_fd_limit().unwrap();
        assert!(limit.soft >= limit.was);
        assert_eq!(Some(limit.soft), fd_limit());
        // Other tests open and close files meanwhile: a margin, not equality.
        let before = open_fds().unwrap();
        let files: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        assert!(open_fds().unwrap() >= before + 45);
        drop(files);
    }
}
