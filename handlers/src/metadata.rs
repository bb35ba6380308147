//! Metadata: the key/value pairs that travel with a call, in both
//! directions, like gRPC metadata or NATS headers.
//!
//! A peer's metadata is input from outside, so it is bounded and validated
//! at the boundary into [`Metadata`], which cannot hold a bad pair. The
//! rules (docs/protocol.md, "Metadata"):
//!
//! - at most [`MAX_ENTRIES`] pairs, [`MAX_TOTAL_BYTES`] bytes of keys and
//!   values together, each key unique;
//! - keys are gRPC metadata keys: 1 to [`MAX_KEY_LEN`] bytes of `a`–`z`,
//!   `0`–`9`, `-`, `_`, `.`, not starting with `grpc-` (reserved, as in
//!   gRPC) and not ending with `-bin` (values are text);
//! - values are gRPC ASCII values: at most [`MAX_VALUE_LEN`] bytes of
//!   printable ASCII (space to `~`).
//!
//! An empty `Metadata` is an empty `Vec`: it never allocates, so a call
//! that sets none pays nothing for it.

use gatemesh_proto::pb;

/// Pairs in one request at most.
pub const MAX_ENTRIES: usize = 32;
/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value, in bytes (a W3C `tracestate` needs up to 512).
pub const MAX_VALUE_LEN: usize = 4096;
/// Keys and values of one request together, in bytes.
pub const MAX_TOTAL_BYTES: usize = 8192;

/// The W3C trace context keys (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Why a pair, or a set of pairs, is not valid metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    #[error("metadata key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },
    #[error("metadata value of {key:?}: {reason}")]
    BadValue { key: String, reason: &'static str },
    #[error("metadata key {0:?} appears more than once")]
    DuplicateKey(String),
    #[error("metadata of {0} bytes exceeds the limit of {MAX_TOTAL_BYTES} bytes")]
    TooLarge(usize),
}

/// Validated metadata of one call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Vec<pb::MetadataEntry>,
}

impl Metadata {
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
        }
    }

    /// Sets `key` to `value`, replacing an earlier value of the same key.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), MetadataError> {
        let (key, value) = (key.into(), value.into());
        check_key(&key)?;
        check_value(&key, &value)?;
        let total = self.total_bytes() + key.len() + value.len();
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == key) {
            let total = total - entry.key.len() - entry.value.len();
            if total > MAX_TOTAL_BYTES {
                return Err(MetadataError::TooLarge(total));
            }
            entry.value = value;
            return Ok(());
        }
        if self.entries.len() >= MAX_ENTRIES {
            return Err(MetadataError::TooManyEntries);
        }
        if total > MAX_TOTAL_BYTES {
            return Err(MetadataError::TooLarge(total));
        }
        self.entries.push(pb::MetadataEntry { key, value });
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let index = self.entries.iter().position(|e| e.key == key)?;
        Some(self.entries.remove(index).value)
    }

    /// The pairs, in the order they were set.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn total_bytes(&self) -> usize {
        self.entries
            .iter()
            .map(|e| e.key.len() + e.value.len())
            .sum()
    }

    /// Checks the pairs of a frame from a peer without taking them.
    pub fn check_wire(entries: &[pb::MetadataEntry]) -> Result<(), MetadataError> {
        if entries.is_empty() {
            return Ok(());
        }
        if entries.len() > MAX_ENTRIES {
            return Err(MetadataError::TooManyEntries);
        }
        let mut total = 0;
        for (i, entry) in entries.iter().enumerate() {
            check_key(&entry.key)?;
            check_value(&entry.key, &entry.value)?;
            if entries[..i].iter().any(|e| e.key == entry.key) {
                return Err(MetadataError::DuplicateKey(entry.key.clone()));
            }
            total += entry.key.len() + entry.value.len();
        }
        if total > MAX_TOTAL_BYTES {
            return Err(MetadataError::TooLarge(total));
        }
        Ok(())
    }

    /// The pairs of a frame from a peer, validated.
    pub fn from_wire(entries: Vec<pb::MetadataEntry>) -> Result<Self, MetadataError> {
        Self::check_wire(&entries)?;
        Ok(Self { entries })
    }

    /// The pairs, as a frame carries them.
    pub fn into_wire(self) -> Vec<pb::MetadataEntry> {
        self.entries
    }
}

/// A key as an error message shows it: never more than a short prefix of
/// what a hostile peer sent.
fn shown(key: &str) -> String {
    key.chars().take(MAX_KEY_LEN).collect()
}

/// Whether `key` may be a metadata key (the rules above), or why not.
pub fn check_key(key: &str) -> Result<(), MetadataError> {
    let bad = |reason| {
        Err(MetadataError::BadKey {
            key: shown(key),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than 64 bytes");
    }
    if !key
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'))
    {
        return bad("only a-z, 0-9, '-', '_' and '.' are allowed");
    }
    if key.starts_with("grpc-") {
        return bad("the grpc- prefix is reserved");
    }
    if key.ends_with("-bin") {
        return bad("binary (-bin) values are not carried");
    }
    Ok(())
}

fn check_value(key: &str, value: &str) -> Result<(), MetadataError> {
    let bad = |reason| {
        Err(MetadataError::BadValue {
            key: shown(key),
            reason,
        })
    };
    if value.len() > MAX_VALUE_LEN {
        return bad("longer than 4096 bytes");
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return bad("only printable ASCII is allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> pb::MetadataEntry {
        pb::MetadataEntry {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn keys_follow_grpc_rules() {
        let mut m = Metadata::new();
        m.insert("x-request-id", "abc 123").unwrap();
        m.insert("tenant.id_2", "").unwrap();
        for key in [
            "",
            "Upper",
            "sp ace",
            "ü",
            "grpc-timeout",
            "blob-bin",
            &"k".repeat(65),
        ] {
            assert!(
                matches!(m.insert(key, "v"), Err(MetadataError::BadKey { .. })),
                "{key:?}"
            );
        }
        for value in ["line\nbreak", "tab\t", "é", &"v".repeat(4097)] {
            assert!(
                matches!(m.insert("k", value), Err(MetadataError::BadValue { .. })),
                "{value:?}"
            );
        }
        assert_eq!(m.len(), 2);
        assert_eq!(m.get("x-request-id"), Some("abc 123"));
    }

    #[test]
    fn count_and_size_are_bounded_and_keys_unique() {
        let mut m = Metadata::new();
        for i in 0..MAX_ENTRIES {
            m.insert(format!("k{i}"), "v").unwrap();
        }
        m.insert("k0", "replaced").unwrap();
        assert_eq!(m.get("k0"), Some("replaced"));
        assert_eq!(
            m.insert("one-more", "v"),
            Err(MetadataError::TooManyEntries)
        );
        let mut m = Metadata::new();
        m.insert("a", "v".repeat(MAX_VALUE_LEN)).unwrap();
        m.insert("b", "v".repeat(MAX_VALUE_LEN - 2)).unwrap();
        assert_eq!(
            m.insert("c", "vvvv"),
            Err(MetadataError::TooLarge(MAX_TOTAL_BYTES + 5))
        );

        let dup = vec![entry("a", "1"), entry("a", "2")];
        assert_eq!(
            Metadata::from_wire(dup),
            Err(MetadataError::DuplicateKey("a".into()))
        );
        let many: Vec<_> = (0..=MAX_ENTRIES)
            .map(|i| entry(&format!("k{i}"), ""))
            .collect();
        assert_eq!(
            Metadata::from_wire(many),
            Err(MetadataError::TooManyEntries)
        );
        let big = vec![
            entry("a", &"v".repeat(MAX_VALUE_LEN)),
            entry("b", &"v".repeat(MAX_VALUE_LEN)),
        ];
        assert!(matches!(
            Metadata::from_wire(big),
            Err(MetadataError::TooLarge(_))
        ));
        let long_key = "K".repeat(100_000);
        let e = Metadata::from_wire(vec![entry(&long_key, "")])
            .unwrap_err()
            .to_string();
        assert!(e.len() < 200, "the error shows a bounded prefix: {e}");
    }

    #[test]
    fn empty_metadata_never_allocates() {
        let m = Metadata::new();
        assert_eq!(m.clone().into_wire().capacity(), 0);
        assert_eq!(Metadata::from_wire(Vec::new()).unwrap(), m);
    }
}
