//! Replacing a file dnsmasq reads, so that dnsmasq sees the old file or
//! the new one and never a mix: a temporary file in the same directory,
//! fsynced, renamed over the target, then the directory fsynced.

use std::io::Write as _;
use std::path::Path;

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

/// Replaces `path` with `content` so that a reader sees the old file or
/// the new one, never a mix: a temporary file in the same directory,
/// fsynced, renamed over the old one, then the directory fsynced.
pub fn write_atomically(path: &Path, content: &str) -> Result<(), DnsmasqError> {
    let fail = |source| DnsmasqError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent(path);
    let name = path
        .file_name()
        .ok_or_else(|| fail(std::io::Error::other("the path names no file")))?;
    let tmp = dir.join(format!(
        ".{}.{}{TEMP_SUFFIX}",
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

/// Removes the temporary files that writes of `path` cut short (a crash
/// between creating one and renaming it) left in its directory: the rename
/// never happened, so they hold nothing anyone was told of. Returns how
/// many went.
pub fn remove_leftovers(path: &Path) -> std::io::Result<usize> {
    let Some(name) = path.file_name() else {
        return Ok(0);
    };
    let dir = parent(path);
    let prefix = format!(".{}.", name.to_string_lossy());
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
}
