//! Real binaries short of file descriptors, and the sockets that make
//! them so: what the tests of the gRPC and HTTP ports' limits share.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::process::{Proc, command};

/// Makes sure this test process may hold `n` more descriptors: raises its
/// own soft limit towards the hard one (never lowers it).
pub fn room_for(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let soft: u64 = line.split_whitespace().nth(3).unwrap().parse().unwrap();
    if soft < n + 256 {
        let status = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!("--nofile={}:", n + 256),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "cannot raise the test's own fd limit");
    }
}

/// `binary` under `prlimit --nofile=limit:limit`, so only it runs short
/// of descriptors.
pub fn spawn_with_fd_limit(name: &str, binary: &Path, limit: u32, env: &[(&str, String)]) -> Proc {
    let child = command("prlimit", env)
        .arg(format!("--nofile={limit}:{limit}"))
        .arg("--")
        .arg(binary)
        .spawn()
        .unwrap_or_else(|e| panic!("run prlimit {name}: {e}"));
    Proc {
        name: name.into(),
        child,
    }
}

/// One GET that gives up after a second (the binary may have no
/// descriptor to accept it with); the body.
pub fn try_get(addr: SocketAddr, path: &str) -> Option<String> {
    get_within(addr, path, Duration::from_secs(1))
}

/// One GET, `Connection: close`, whose connect and each read give up
/// after `within`; the body.
pub fn get_within(addr: SocketAddr, path: &str, within: Duration) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, within).ok()?;
    stream.set_read_timeout(Some(within)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// Opens `n` TCP connections to `addr` at once that never send a byte;
/// those the kernel never lets through in 30 s are left out.
pub fn idle_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let attempts: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(tokio::time::timeout(
                    Duration::from_secs(30),
                    tokio::net::TcpStream::connect(addr),
                ))
            })
            .collect();
        let mut open = Vec::new();
        for attempt in attempts {
            if let Ok(Ok(Ok(stream))) = attempt.await {
                open.push(stream.into_std().unwrap());
            }
        }
        open
    })
}
