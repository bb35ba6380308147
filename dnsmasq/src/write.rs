//! Replacing a file dnsmasq reads, so that dnsmasq sees the old file or
//! the new one and never a mix, and the new one survives a crash once the
//! write has returned: a temporary file with an unpredictable name in the
//! target's directory, fsynced, renamed over the target, then the directory
//! fsynced. An advisory lock (`flock`) on the directory is held throughout,
//! so two writers of the same directory (two tasks, or a second process
//! given the same paths) never interleave, and the sweep of leftovers never
//! removes a temporary file a writer is still filling.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

use crate::DnsmasqError;

/// The end of every temporary file's name; the start is `.<target>.`.
const TEMP_SUFFIX: &str = ".tmp";

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn temp_prefix(name: &OsStr) -> String {
    format!(".{}.", name.to_string_lossy())
}

/// An exclusive `flock` on `dir`, released when dropped. The lock is on
/// the directory, not the file: the rename replaces the file's inode, so a
/// lock on the old one would not keep out a writer that opened the new.
fn lock(dir: &Path) -> std::io::Result<Flock<File>> {
    Flock::lock(File::open(dir)?, FlockArg::LockExclusive)
        .map_err(|(_, errno)| std::io::Error::from(errno))
}

/// Replaces `path` with `content` (see the module's documentation). The
/// file gets the mode a plain `File::create` would give it (0666 less the
/// umask): dnsmasq runs as another user and must read it.
pub fn write_atomically(path: &Path, content: &str) -> Result<(), DnsmasqError> {
    let fail = |source| DnsmasqError::Write {
        path: path.to_path_buf(),
        source,
    };
    let name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("the path names no file")))?;
    let dir = parent(path);
    let locked = lock(dir).map_err(fail)?;
    let prefix = temp_prefix(name);
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(TEMP_SUFFIX)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(fail)?;
    // On any error below, dropping `temp` removes the temporary file.
    temp.write_all(content.as_bytes()).map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    temp.persist(path).map_err(|e| fail(e.error))?;
    // The rename is durable once the directory is: until then a crash can
    // bring the old file back after the caller was told the new one is in.
    locked.sync_all().map_err(fail)?;
    Ok(())
}

/// Removes the temporary files that writes of `path` cut short (a crash
/// between creating one and renaming it) left in its directory: the rename
/// never happened, so they hold nothing anyone was told of. Returns how
/// many went.
pub fn remove_leftovers(path: &Path) -> std::io::Result<usize> {
    let Some(name) = path.file_name() else {
        return Ok(0);
    };
    let dir = parent(path);
    let _locked = lock(dir)?;
    let prefix = temp_prefix(name);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let entry_name = entry.file_name();
        let entry_name = entry_name.to_string_lossy();
        if entry_name.starts_with(&prefix) && entry_name.ends_with(TEMP_SUFFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A fresh directory under the system's temporary one, removed on drop.
    pub(crate) struct TestDir(tempfile::TempDir);

    impl TestDir {
        pub(crate) fn new(name: &str) -> Self {
            Self(
                tempfile::Builder::new()
                    .prefix(&format!("gatemesh-dnsmasq-{name}-"))
                    .tempdir()
                    .unwrap(),
            )
        }

        pub(crate) fn join(&self, name: &str) -> PathBuf {
            self.0.path().join(name)
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.0.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    #[test]
    fn writes_atomically_and_leaves_no_temporary_file() {
        let dir = TestDir::new("write");
        let path = dir.join("hosts");
        write_atomically(&path, "one\n").unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(dir.names(), ["hosts"]);
        let e = write_atomically(&dir.join("missing/hosts"), "x").unwrap_err();
        assert!(e.to_string().contains("missing/hosts"), "{e}");
        assert_eq!(e.kind(), "write");
    }

    #[test]
    fn the_file_gets_the_mode_a_plain_create_gives_so_dnsmasq_can_read_it() {
        let dir = TestDir::new("mode");
        let plain = dir.join("plain");
        File::create(&plain).unwrap();
        let written = dir.join("written");
        write_atomically(&written, "x\n").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&written), mode(&plain));
    }

    #[test]
    fn leftovers_of_a_write_cut_short_are_swept_and_nothing_else() {
        let dir = TestDir::new("leftovers");
        let path = dir.join("reservations");
        write_atomically(&path, "kept\n").unwrap();
        std::fs::write(dir.join(".reservations.999.tmp"), "garbage").unwrap();
        std::fs::write(dir.join(".reservations.x7Qz.tmp"), "garbage").unwrap();
        std::fs::write(dir.join(".other.1.tmp"), "not ours").unwrap();
        assert_eq!(remove_leftovers(&path).unwrap(), 2);
        assert_eq!(dir.names(), [".other.1.tmp", "reservations"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\n");
    }

    /// Without the directory lock, a sweep can remove a writer's temporary
    /// file between its creation and its rename, and that write fails.
    #[test]
    fn concurrent_writers_and_sweeps_never_trip_over_each_other() {
        let dir = TestDir::new("concurrent");
        let path = dir.join("hosts");
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    remove_leftovers(&path).unwrap();
                }
            })
        };
        let contents: Vec<String> = (0..4)
            .map(|w| format!("writer {w}\n").repeat(2000))
            .collect();
        let writers: Vec<_> = contents
            .iter()
            .cloned()
            .map(|content| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        write_atomically(&path, &content).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        sweeper.join().unwrap();
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(contents.contains(&last), "one writer's whole content");
        assert_eq!(dir.names(), ["hosts"]);
    }
}
