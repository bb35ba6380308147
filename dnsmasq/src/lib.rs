//! Everything about dnsmasq's files and process, knowing nothing of the
//! mesh: the files a node hands dnsmasq, the lease file it reads back, and
//! the signal that makes dnsmasq read its files again. The DHCP manager
//! and the IP allocator both go through here, so both follow one set of
//! rules.
//!
//! - [`write`]: [`write_atomically`], a locked, atomic and durable
//!   replacement of a file dnsmasq reads, and the sweep of the temporary
//!   files a write cut short left behind.
//! - [`signal`]: [`reload`], SIGHUP to the pid in dnsmasq's pid file, sent
//!   only once `/proc` says that process is dnsmasq.
//! - [`leases`]: the lease-file parser; takes any bytes, never fails.
//! - [`settled`]: [`read_settled`], one snapshot of a lease file that
//!   dnsmasq rewrites in place: two reads a moment apart agree, and a line
//!   without its newline is never used.
//! - [`names`]: which names may reach dnsmasq (RFC 1123, the VPS
//!   namespace), and [`names::short`] for a stranger's words in a message.
//! - [`settings`]: [`DnsmasqSettings`], `GATEWAY_DNSMASQ_PID_FILE`.
//! - [`watch`]: [`watch_file`], a watch on one of those files that sees
//!   it replaced or deleted.
//! - [`error`]: [`DnsmasqError`], why a write or a reload failed.

#![forbid(unsafe_code)]

pub mod error;
pub mod leases;
pub mod names;
pub mod settings;
pub mod settled;
pub mod signal;
pub mod watch;
pub mod write;

pub use error::DnsmasqError;
pub use leases::unix_now;
pub use names::{NameRefusal, Namespace};
pub use settings::DnsmasqSettings;
pub use settled::{Settle, Snapshot, read_settled};
pub use signal::reload;
pub use watch::watch_file;
pub use write::{remove_leftovers, write_atomically};
