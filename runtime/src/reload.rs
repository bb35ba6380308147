//! Files read again when they change: TLS certificates, keys and CAs that
//! an agent rotates on disk (SPIRE, an ACME client) while the binary runs.
//! Both ends use [`Reloading`]: the gateway looks at each new connection,
//! an instance at each dial.
//!
//! A change is seen by comparing each file's [`Stamp`] (device, inode,
//! size, modification and change times): a file rewritten in place or
//! replaced by a rename, or a symlink swapped to a new target (Kubernetes'
//! secret volumes), all change it. A set that does not load (a key
//! written before its certificate, a half-copied file) keeps the previous
//! value: it is logged once per change and reported by
//! [`Reloading::problem`] until a later change loads.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ConfigError;

/// What tells one version of a file from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of `path` (symlinks followed); `None` when it cannot be
    /// read.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// A value loaded from files, loaded again when one of them changes.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Box<dyn Fn() -> Result<T, ConfigError> + Send + Sync>,
    /// The files as they were when last looked at.
    seen: Vec<Option<Stamp>>,
    current: Arc<T>,
    problem: Option<String>,
    reloads: u64,
    failures: u64,
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading")
            .field("what", &self.what)
            .field("paths", &self.paths)
            .field("problem", &self.problem)
            .finish_non_exhaustive()
    }
}

impl<T> Reloading<T> {
    /// Loads the value from `paths` with `load`, which reads them; its
    /// error stops the binary at start. `what` names the value in logs
    /// (`"the gRPC port's TLS files"`).
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        load: impl Fn() -> Result<T, ConfigError> + Send + Sync + 'static,
    ) -> Result<Self, ConfigError> {
        let seen = paths.iter().map(|p| Stamp::of(p)).collect();
        let current = Arc::new(load()?);
        Ok(Self {
            what,
            paths,
            load: Box::new(load),
            seen,
            current,
            problem: None,
            reloads: 0,
            failures: 0,
        })
    }

    /// A value from no file: never reloaded.
    pub fn fixed(what: &'static str, value: T) -> Self {
        Self {
            what,
            paths: Vec::new(),
            load: Box::new(|| Err(ConfigError("a fixed value is not reloaded".into()))),
            seen: Vec::new(),
            current: Arc::new(value),
            problem: None,
            reloads: 0,
            failures: 0,
        }
    }

    /// The value, loaded again first if a file changed since the last
    /// look. A failed load keeps the previous value.
    pub fn current(&mut self) -> Arc<T> {
        let now: Vec<Option<Stamp>> = self.paths.iter().map(|p| Stamp::of(p)).collect();
        if now != self.seen {
            self.seen = now;
            match (self.load)() {
                Ok(value) => {
                    self.current = Arc::new(value);
                    self.reloads += 1;
                    self.problem = None;
                    tracing::info!(what = self.what, "reloaded: its files changed");
                }
                Err(e) => {
                    self.failures += 1;
                    tracing::warn!(what = self.what, error = %e,
                        "files changed but do not load; keeping the previous ones");
                    self.problem = Some(format!("{e}; the previous ones stay in use"));
                }
            }
        }
        self.current.clone()
    }

    /// The value as last loaded, without looking at the files.
    pub fn last(&self) -> Arc<T> {
        self.current.clone()
    }

    /// Why the files last seen do not load, until a change loads.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// Successful loads after the first.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// Changes that did not load.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_loads_again_and_a_bad_one_keeps_the_last_good_value() {
        let dir = std::env::temp_dir().join(format!("gatemesh-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("value");
        std::fs::write(&file, "1").unwrap();
        let path = file.clone();
        let mut value = Reloading::new("a number", vec![file.clone()], move || {
            std::fs::read_to_string(&path)
                .map_err(|e| ConfigError(e.to_string()))?
                .trim()
                .parse::<u32>()
                .map_err(|e| ConfigError(format!("not a number: {e}")))
        })
        .unwrap();
        assert_eq!(*value.current(), 1);
        assert_eq!(value.reloads(), 0, "nothing changed");
        // Replaced by a rename, as rotating agents do.
        let tmp = dir.join("value.tmp");
        std::fs::write(&tmp, "2").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(*value.current(), 2);
        assert_eq!(value.reloads(), 1);
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(*value.current(), 2, "a bad change keeps the last value");
        assert!(value.problem().unwrap().starts_with("not a number"));
        assert_eq!(*value.current(), 2);
        assert_eq!(value.failures(), 1, "one failure per change, not per look");
        std::fs::write(&tmp, "3").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(*value.current(), 3);
        assert_eq!(value.problem(), None);
        let _ = std::fs::remove_dir_all(&dir);
        let mut fixed = Reloading::fixed("fixed", 7);
        assert_eq!(*fixed.current(), 7);
    }
}
