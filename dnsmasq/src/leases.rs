//! dnsmasq's lease file, in every form dnsmasq writes it.
//!
//! ```text
//! 1732240000 52:54:00:12:34:56 10.0.0.5 vm1 01:52:54:00:12:34:56   IPv4
//! 0 52:54:00:12:34:57 10.0.0.6 * *                                 IPv4, infinite, no name
//! 1732240000 20-00:11:22:33:44:55:66:77 10.0.0.7 * *               non-Ethernet hardware
//! duid 00:01:00:01:2c:1f:9a:e3:52:54:00:00:00:01                   the server's DUID
//! 1732240000 1234567 fd00::5 vm1 00:03:00:01:52:54:00:12:34:56     IPv6 (IAID, DUID)
//! 1732240000 T1234567 fd00::6 * 00:01:...                          IPv6 temporary address
//! ```
//!
//! Parsing never fails and takes any bytes: a line that fits none of these
//! forms (bad UTF-8, an expiry past year 9999, an odd field) becomes a
//! [`ParseWarning`] with its line number, and the rest is still used. The
//! file is written by root but its hostnames and client ids come from the
//! tenants' DHCP clients, so nothing in it is trusted beyond its shape.

use std::fmt;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now, as dnsmasq's lease file counts them.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The link-layer identity dnsmasq recorded for a lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hardware {
    /// An Ethernet MAC, lowercase, colon-separated.
    Mac(String),
    /// Another hardware type: `<type>-<address>` as dnsmasq wrote it.
    Other(String),
    /// A DHCPv6 identity association; `temporary` for a `T`-prefixed IAID.
    Iaid { iaid: u32, temporary: bool },
}

/// One active lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Unix seconds at which the lease ends; `None` for an infinite lease.
    pub expires: Option<u64>,
    pub hardware: Hardware,
    pub ip: IpAddr,
    pub hostname: Option<String>,
    /// The client id (IPv4) or client DUID (IPv6), as hex with colons.
    pub client_id: Option<String>,
}

impl Lease {
    /// The MAC to look the lease up by: the Ethernet address for IPv4, and
    /// for IPv6 the one embedded in a link-layer DUID (types 1 and 3 over
    /// Ethernet), when there is one.
    pub fn mac(&self) -> Option<String> {
        match &self.hardware {
            Hardware::Mac(mac) => Some(mac.clone()),
            Hardware::Other(_) => None,
            Hardware::Iaid { .. } => self.client_id.as_deref().and_then(mac_from_duid),
        }
    }

    pub fn is_active(&self, now: u64) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

/// A line that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseWarning {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The latest expiry taken as a time: the end of year 9999. A larger value
/// is a corrupt line, not a lease (and would overflow `SystemTime`).
pub const MAX_EXPIRY: u64 = 253_402_300_799;

/// Warnings kept per read; the rest are only counted in
/// [`LeaseFile::malformed`], so a file of garbage costs no memory.
pub const MAX_WARNINGS: usize = 100;

/// The longest client id or DUID taken, in bytes (dnsmasq's own limit on
/// a DHCP option is 255 bytes, three characters each as hex with colons).
const MAX_CLIENT_ID: usize = 255 * 3;

/// How much of an offending field a warning quotes.
const QUOTE: usize = 40;

/// What one read of the lease file yielded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFile {
    /// Active leases, in file order.
    pub leases: Vec<Lease>,
    /// The server's DUID, from the `duid` line.
    pub server_duid: Option<String>,
    /// Well-formed leases skipped because they had expired.
    pub expired: usize,
    /// The first [`MAX_WARNINGS`] malformed lines.
    pub warnings: Vec<ParseWarning>,
    /// Every malformed line, counted.
    pub malformed: usize,
    /// The last line has no newline: dnsmasq ends every line with one, so
    /// the file is probably being written right now.
    pub unterminated: bool,
}

impl LeaseFile {
    fn warn(&mut self, line: usize, message: String) {
        self.malformed += 1;
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(ParseWarning { line, message });
        }
    }
}

/// Parses the whole file; `now` is Unix seconds, a parameter so that
/// expiry is deterministic under test.
pub fn parse(text: &str, now: u64) -> LeaseFile {
    parse_bytes(text.as_bytes(), now)
}

/// Parses the file as read from disk: any bytes. A line that is not UTF-8
/// is skipped like any other malformed line.
pub fn parse_bytes(bytes: &[u8], now: u64) -> LeaseFile {
    let mut file = LeaseFile {
        unterminated: bytes.last().is_some_and(|b| *b != b'\n'),
        ..LeaseFile::default()
    };
    for (index, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let Ok(line) = std::str::from_utf8(line) else {
            file.warn(index + 1, "the line is not valid UTF-8".into());
            continue;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_ascii_whitespace();
        if fields.next() == Some("duid") {
            match (fields.next(), fields.next()) {
                (Some(duid), None) if is_hex_colon(duid) => {
                    file.server_duid = Some(duid.to_ascii_lowercase())
                }
                _ => file.warn(index + 1, "a duid line needs one hex DUID".into()),
            }
            continue;
        }
        match parse_lease(line) {
            Ok(lease) if lease.is_active(now) => file.leases.push(lease),
            Ok(_) => file.expired += 1,
            Err(message) => file.warn(index + 1, message),
        }
    }
    file
}

/// A field as a warning quotes it: debug-escaped and cut short.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cut: String = self.0.chars().take(QUOTE).collect();
        if cut.len() < self.0.len() {
            write!(f, "{cut:?}...")
        } else {
            write!(f, "{cut:?}")
        }
    }
}

fn parse_lease(line: &str) -> Result<Lease, String> {
    let mut split = line.split_ascii_whitespace();
    let fields: Vec<&str> = split.by_ref().take(5).collect();
    let extra = split.count();
    let [expiry, hw, ip, hostname, client_id] = fields[..] else {
        return Err(format!("expected 5 fields, found {}", fields.len()));
    };
    if extra > 0 {
        return Err(format!("expected 5 fields, found {}", 5 + extra));
    }
    let expires: u64 = expiry
        .parse()
        .map_err(|_| format!("expiry {} is not a number of seconds", Quoted(expiry)))?;
    if expires > MAX_EXPIRY {
        return Err(format!("expiry {expires} is past year 9999"));
    }
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("{} is not an IP address", Quoted(ip)))?;
    let hardware = match ip {
        IpAddr::V4(_) => parse_hardware(hw)?,
        IpAddr::V6(_) => {
            let (temporary, digits) = match hw.strip_prefix('T') {
                Some(rest) => (true, rest),
                None => (false, hw),
            };
            let iaid = digits
                .parse()
                .map_err(|_| format!("IAID {} is not a 32-bit number", Quoted(hw)))?;
            Hardware::Iaid { iaid, temporary }
        }
    };
    let hostname = match hostname {
        "*" => None,
        name if is_hostname(name) => Some(name.to_string()),
        name => {
            return Err(format!(
                "hostname {} is not a name (too long, or characters a name cannot hold)",
                Quoted(name)
            ));
        }
    };
    let client_id = match client_id {
        "*" => None,
        id if id.len() <= MAX_CLIENT_ID && is_hex_colon(id) => Some(id.to_ascii_lowercase()),
        id => return Err(format!("client id {} is not hex, or too long", Quoted(id))),
    };
    Ok(Lease {
        expires: (expires != 0).then_some(expires),
        hardware,
        ip,
        hostname,
        client_id,
    })
}

fn parse_hardware(field: &str) -> Result<Hardware, String> {
    if let Some((kind, address)) = field.split_once('-')
        && field.len() <= MAX_CLIENT_ID
        && kind.len() == 2
        && kind.bytes().all(|b| b.is_ascii_hexdigit())
        && (address.is_empty() || is_hex_colon(address))
    {
        return Ok(Hardware::Other(field.to_ascii_lowercase()));
    }
    if field.len() <= MAX_CLIENT_ID && is_hex_colon(field) {
        Ok(Hardware::Mac(field.to_ascii_lowercase()))
    } else {
        Err(format!("hardware address {} is not hex", Quoted(field)))
    }
}

/// `aa:bb:...`: one or more two-digit hex bytes separated by colons.
fn is_hex_colon(s: &str) -> bool {
    !s.is_empty()
        && s.split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Safe to put in a hosts file: no spaces, no comment marker, no control
/// characters.
pub(crate) fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The MAC inside a DUID-LLT (type 1) or DUID-LL (type 3) over Ethernet.
fn mac_from_duid(duid: &str) -> Option<String> {
    let bytes: Vec<&str> = duid.split(':').collect();
    let mac = match bytes.as_slice() {
        ["00", "01", "00", "01", _, _, _, _, mac @ ..] => mac,
        ["00", "03", "00", "01", mac @ ..] => mac,
        _ => return None,
    };
    (mac.len() == 6).then(|| mac.join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_732_240_000;

    /// Lines as dnsmasq 2.89 writes them, odd forms included.
    const REAL: &str = "\
1732243600 52:54:00:12:34:56 10.0.0.5 vps-42 01:52:54:00:12:34:56
0 52:54:00:ab:cd:ef 10.0.0.6 * *
1732243600 20-00:11:22:33:44:55:66:77 10.0.0.7 ib-host *
1732243600 00- 10.0.0.8 * *
duid 00:01:00:01:2c:1f:9a:e3:52:54:00:00:00:01
1732243600 1234567 fd00::5 vm-six 00:03:00:01:52:54:00:12:34:56
1732243600 T42 fd00::6 * 00:01:00:01:2c:1f:9a:e3:52:54:00:aa:bb:cc
1732243600 99 fd00::7 * 00:02:00:00:ab:11:01
";

    #[test]
    fn every_form_dnsmasq_writes() {
        let file = parse(REAL, NOW);
        assert!(file.warnings.is_empty(), "{:?}", file.warnings);
        assert_eq!(file.expired, 0);
        assert_eq!(file.leases.len(), 7);
        assert_eq!(
            file.server_duid.as_deref(),
            Some("00:01:00:01:2c:1f:9a:e3:52:54:00:00:00:01")
        );
        let v4 = &file.leases[0];
        assert_eq!(v4.expires, Some(1_732_243_600));
        assert_eq!(v4.hardware, Hardware::Mac("52:54:00:12:34:56".into()));
        assert_eq!(v4.ip.to_string(), "10.0.0.5");
        assert_eq!(v4.hostname.as_deref(), Some("vps-42"));
        assert_eq!(v4.client_id.as_deref(), Some("01:52:54:00:12:34:56"));
        let infinite = &file.leases[1];
        assert_eq!(infinite.expires, None, "expiry 0 is infinite");
        assert!(infinite.is_active(u64::MAX));
        assert_eq!(infinite.hostname, None);
        assert_eq!(infinite.client_id, None);
        assert_eq!(
            file.leases[2].hardware,
            Hardware::Other("20-00:11:22:33:44:55:66:77".into())
        );
        assert_eq!(file.leases[2].mac(), None);
        assert_eq!(file.leases[3].hardware, Hardware::Other("00-".into()));
        let v6 = &file.leases[4];
        assert_eq!(
            v6.hardware,
            Hardware::Iaid {
                iaid: 1_234_567,
                temporary: false
            }
        );
        assert_eq!(v6.ip.to_string(), "fd00::5");
        assert_eq!(v6.mac().as_deref(), Some("52:54:00:12:34:56"), "DUID-LL");
        let temporary = &file.leases[5];
        assert_eq!(
            temporary.hardware,
            Hardware::Iaid {
                iaid: 42,
                temporary: true
            }
        );
        assert_eq!(
            temporary.mac().as_deref(),
            Some("52:54:00:aa:bb:cc"),
            "DUID-LLT"
        );
        assert_eq!(file.leases[6].mac(), None, "DUID-EN carries no MAC");
    }

    #[test]
    fn expired_leases_are_skipped_and_counted() {
        let text = "\
1732239999 52:54:00:00:00:01 10.0.0.1 * *
1732240000 52:54:00:00:00:02 10.0.0.2 * *
1732240001 52:54:00:00:00:03 10.0.0.3 * *
0 52:54:00:00:00:04 10.0.0.4 * *
";
        let file = parse(text, NOW);
        let ips: Vec<String> = file.leases.iter().map(|l| l.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.3", "10.0.0.4"]);
        assert_eq!(file.expired, 2, "a lease ending now has ended");
        assert!(file.warnings.is_empty());
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number_and_skipped() {
        let text = "\
1732243600 52:54:00:00:00:01 10.0.0.1 good *

garbage
1732243600 52:54:00:00:00:02 10.0.0.2 *
soon 52:54:00:00:00:03 10.0.0.3 * *
1732243600 zz:54:00:00:00:04 10.0.0.4 * *
1732243600 52:54:00:00:00:05 10.0.0.300 * *
1732243600 abc fd00::1 * *
1732243600 52:54:00:00:00:06 10.0.0.6 bad#name *
1732243600 52:54:00:00:00:07 10.0.0.7 * not-hex
duid
-5 52:54:00:00:00:08 10.0.0.8 * *
1732243600 52:54:00:00:00:09 10.0.0.9 tail * extra
\u{0}\u{ff}é 1 2 3 4
1732243600 52:54:00:00:00:0a 10.0.0.10 also-good *
";
        let file = parse(text, NOW);
        let names: Vec<_> = file
            .leases
            .iter()
            .map(|l| l.hostname.clone().unwrap())
            .collect();
        assert_eq!(names, ["good", "also-good"]);
        let lines: Vec<usize> = file.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert!(file.warnings[0].to_string().starts_with("line 3: "));
        assert!(
            file.warnings[4].message.contains("10.0.0.300"),
            "{}",
            file.warnings[4]
        );
    }

    #[test]
    fn empty_and_whitespace_files_have_no_leases() {
        assert_eq!(parse("", NOW), LeaseFile::default());
        assert_eq!(parse("\n  \n\t\n", NOW), LeaseFile::default());
    }

    #[test]
    fn mixed_case_is_normalised() {
        let file = parse("0 52:54:00:AB:CD:EF 10.0.0.9 Host 01:AA\n", NOW);
        assert_eq!(file.leases[0].mac().as_deref(), Some("52:54:00:ab:cd:ef"));
        assert_eq!(file.leases[0].client_id.as_deref(), Some("01:aa"));
        assert_eq!(file.leases[0].hostname.as_deref(), Some("Host"));
    }

    #[test]
    fn a_poisoned_expiry_and_a_non_utf8_byte_cost_only_their_line() {
        let mut bytes = b"1732243600 52:54:00:00:00:01 10.0.0.1 good *\n".to_vec();
        bytes.extend(b"18446744073709551615 52:54:00:00:00:02 10.0.0.2 * *\n");
        bytes.extend(b"253402300800 52:54:00:00:00:03 10.0.0.3 * *\n");
        bytes.extend(b"1732243600 52:54:00:00:00:04 10.0.0.4 caf\xe9 *\n");
        bytes.extend(b"253402300799 52:54:00:00:00:05 10.0.0.5 late *\n");
        let file = parse_bytes(&bytes, NOW);
        let names: Vec<_> = file.leases.iter().map(|l| l.hostname.clone()).collect();
        assert_eq!(names, [Some("good".into()), Some("late".into())]);
        let lines: Vec<usize> = file.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, [2, 3, 4]);
        assert_eq!(file.malformed, 3);
        assert!(
            file.warnings[2].message.contains("UTF-8"),
            "{}",
            file.warnings[2]
        );
        assert!(!file.unterminated);
    }

    #[test]
    fn a_half_written_last_line_is_flagged() {
        let file = parse(
            "0 52:54:00:00:00:01 10.0.0.1 * *\n0 52:54:00:00:00:02 10.0.",
            NOW,
        );
        assert!(file.unterminated);
        assert!(!parse("", NOW).unterminated);
    }

    #[test]
    fn warnings_are_capped_and_quote_little() {
        let long = "x".repeat(100_000);
        let text = format!("{long} 52:54:00:00:00:01 10.0.0.1 * *\n").repeat(MAX_WARNINGS + 50);
        let file = parse(&text, NOW);
        assert_eq!(file.malformed, MAX_WARNINGS + 50);
        assert_eq!(file.warnings.len(), MAX_WARNINGS);
        assert!(file.warnings[0].message.len() < 200, "{}", file.warnings[0]);
    }
}
