//! What `/proc` says about a process: CPU time used and memory resident.

use std::io;

/// User plus system CPU time of `pid` so far, in seconds; `ticks_per_s` is
/// `gatemesh_runtime::metrics::clock_ticks_per_second()`.
pub fn cpu_seconds(pid: u32, ticks_per_s: f64) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields are counted after its ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, utime field 14, stime field 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed stat"))
    };
    Ok((field(14)? + field(15)?) as f64 / ticks_per_s)
}

/// Resident set size of `pid`, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        assert!(
            cpu_seconds(pid, gatemesh_runtime::metrics::clock_ticks_per_second()).unwrap() >= 0.0
        );
        assert!(rss_kib(pid).unwrap() > 0);
    }
}
