//! One snapshot of dnsmasq's lease file. dnsmasq rewrites the file in
//! place (it truncates it, then writes it again), so a read can see half a
//! file, or a file cut in the middle of a line. [`read_settled`] reads until
//! two reads a moment apart agree and the file ends with a newline, and
//! never hands out a line without its newline: such a line is being
//! written, and its address or MAC may be cut short. A read that fails is
//! an error, never "no leases": a caller that took it for an empty file
//! would hand out addresses in use.

use std::io;
use std::path::Path;
use std::time::Duration;

/// How a read waits for the file to settle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    /// Between two reads that must agree.
    pub pause: Duration,
    /// Reads after the first that may be spent waiting; then the last
    /// read is used (its complete lines only).
    pub attempts: usize,
}

/// What a settled read saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The file's complete lines: everything up to its last newline.
    pub bytes: Vec<u8>,
    /// Two reads a pause apart agreed and the file ended with a newline.
    /// False when the attempts ran out while the file kept changing.
    pub settled: bool,
    /// The read used ended in the middle of a line, which was left out.
    pub cut: bool,
}

impl Snapshot {
    fn of(mut bytes: Vec<u8>, settled: bool) -> Self {
        let cut = !ends_a_line(&bytes);
        if cut {
            let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(keep);
        }
        Self {
            bytes,
            settled,
            cut,
        }
    }
}

fn ends_a_line(bytes: &[u8]) -> bool {
    bytes.last().is_none_or(|b| *b == b'\n')
}

/// Reads `path` until two reads `settle.pause` apart agree and it ends
/// with a newline, or `settle.attempts` more reads were spent; one
/// snapshot of its complete lines either way. A missing file is an empty
/// one (dnsmasq has not written one yet); any other failure is an error.
pub async fn read_settled(path: &Path, settle: Settle) -> io::Result<Snapshot> {
    let mut previous = read(path).await?;
    for _ in 0..settle.attempts {
        tokio::time::sleep(settle.pause).await;
        let next = read(path).await?;
        let agreed = next == previous && ends_a_line(&next);
        previous = next;
        if agreed {
            return Ok(Snapshot::of(previous, true));
        }
    }
    Ok(Snapshot::of(previous, false))
}

async fn read(path: &Path) -> io::Result<Vec<u8>> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::tests::TestDir;

    const SETTLE: Settle = Settle {
        pause: Duration::from_millis(20),
        attempts: 5,
    };

    #[tokio::test(start_paused = true)]
    async fn a_steady_file_is_read_whole() {
        let dir = TestDir::new("steady");
        let path = dir.join("leases");
        std::fs::write(&path, "a\nb\n").unwrap();
        let snap = read_settled(&path, SETTLE).await.unwrap();
        assert_eq!(snap.bytes, b"a\nb\n");
        assert!(snap.settled && !snap.cut);
        let none = read_settled(&dir.join("none"), SETTLE).await.unwrap();
        assert_eq!(
            none,
            Snapshot {
                settled: true,
                ..Snapshot::default()
            }
        );
    }

    /// dnsmasq stopped after the first line of its rewrite; a moment later
    /// the rest is there. Two reads back to back would have agreed on half
    /// a file.
    #[tokio::test(start_paused = true)]
    async fn a_rewrite_paused_between_lines_is_waited_for() {
        let dir = TestDir::new("paused");
        let path = dir.join("leases");
        std::fs::write(&path, "a\n").unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE.pause / 2).await;
                std::fs::write(&path, "a\nb\n").unwrap();
            })
        };
        let snap = read_settled(&path, SETTLE).await.unwrap();
        writer.await.unwrap();
        assert_eq!(snap.bytes, b"a\nb\n");
        assert!(snap.settled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_without_its_newline_is_never_used() {
        let dir = TestDir::new("cut");
        let path = dir.join("leases");
        std::fs::write(&path, "a\nb-cut-sh").unwrap();
        let snap = read_settled(&path, SETTLE).await.unwrap();
        assert_eq!(snap.bytes, b"a\n", "the last line waits for its newline");
        assert!(!snap.settled && snap.cut, "{snap:?}");

        std::fs::write(&path, "a\nb-cut-sh").unwrap();
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE.pause * 2).await;
                std::fs::write(&path, "a\nb-cut-short\n").unwrap();
            })
        };
        let snap = read_settled(&path, SETTLE).await.unwrap();
        writer.await.unwrap();
        assert_eq!(snap.bytes, b"a\nb-cut-short\n");
        assert!(snap.settled && !snap.cut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_cannot_be_read_is_an_error_not_an_empty_file() {
        let dir = TestDir::new("unreadable");
        let path = dir.join("leases");
        std::fs::create_dir(&path).unwrap();
        assert!(read_settled(&path, SETTLE).await.is_err());
    }
}
