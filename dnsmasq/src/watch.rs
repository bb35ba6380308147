//! [`watch_file`]: a watch on one of dnsmasq's files. The directory is
//! watched, not the file: dnsmasq and the node's own atomic writes replace
//! a file by renaming another onto it, which a watch on the file itself
//! would lose, and a deleted file is seen too.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;

use notify::Watcher as _;
use tokio::sync::Notify;

/// Watches the directory that holds `path` and signals `changed` on any
/// event about that file other than a read, and when the watch lost
/// events (look at the file to be sure). The watch lasts as long as the
/// watcher returned.
pub fn watch_file(path: &Path, changed: Arc<Notify>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let name: Option<OsString> = path.file_name().map(OsString::from);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            changed.notify_one();
            return;
        };
        let relevant = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if relevant && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            changed.notify_one();
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
