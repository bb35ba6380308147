//! The reservations and the rules that change them, with no I/O: what
//! `AllocateIP` and `ReleaseIP` do to the table, and the file the table is
//! (see [`render`] and [`parse`]). The owner task around it (`crate::owner`)
//! applies requests one after another, so every rule here is checked
//! against the state the previous request left.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use gatemesh_proto::pb;

use crate::pool::Pool;

/// An Ethernet MAC: unicast, not all zeros. Shown lowercase with colons,
/// as dnsmasq writes it in its lease file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac([u8; 6]);

impl FromStr for Mac {
    type Err = ();

    /// `52:54:00:12:34:56` or `52-54-00-12-34-56`, any case.
    fn from_str(s: &str) -> Result<Self, ()> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if s.len() != 17 || parts.len() != 6 {
            return Err(());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ())?;
        }
        // A group address or zeros is no VM's NIC.
        if mac[0] & 1 == 1 || mac == [0; 6] {
            return Err(());
        }
        Ok(Self(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Longest VPS or organization id.
pub const MAX_ID: usize = 128;

/// An id as the mesh's labels allow it: 1 to [`MAX_ID`] bytes of letters,
/// digits and `._-:@/`. No space, `,`, `=` or `#`, so it is one token of
/// the reservations file and one field of dnsmasq's.
pub fn valid_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@/".contains(&b))
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub vps_id: String,
    /// Empty when not given.
    pub organization_id: String,
    /// The allocating instance's environment; empty for the admin API.
    pub environment: String,
    /// Unix seconds.
    pub allocated_at: u64,
}

impl From<&Reservation> for pb::IpReservation {
    fn from(r: &Reservation) -> Self {
        Self {
            ip: r.ip.to_string(),
            mac: r.mac.to_string(),
            vps_id: r.vps_id.clone(),
            organization_id: r.organization_id.clone(),
            environment: r.environment.clone(),
            allocated_at: r.allocated_at,
        }
    }
}

/// Why an `AllocateIP`, `ReleaseIP` or `ListIPs` request was refused.
/// Made where the rule fails; a log field, a metric label and a gRPC
/// status at the edge ([`IpRefusal::code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpRefusal {
    BadMac,
    BadIp,
    BadId,
    /// `ReleaseIP` with neither a VPS id nor a MAC.
    NoKey,
    /// A requested address outside the pool.
    OutsidePool,
    /// Every free address is reserved or leased.
    Exhausted,
    /// The caller's environment holds its quota of addresses
    /// (`GATEWAY_IP_QUOTA`).
    Quota,
    /// The requested address is reserved for another VPS.
    Taken,
    /// The requested address is held by an active lease of another MAC.
    Leased,
    /// The VPS holds another MAC or address, or the MAC another VPS.
    Conflict,
    /// The reservation belongs to another environment.
    Environment,
    /// `ListIPs`' page size or token is out of range.
    BadPage,
    /// `ReleaseIP`'s VPS id and MAC name different reservations.
    Mismatch,
    /// Nothing is reserved for that VPS or MAC.
    NotFound,
    /// The reservations file could not be written; nothing changed.
    Persist,
    /// The allocator cannot answer now: it is not running, or the lease
    /// file it must check cannot be read.
    Unavailable,
}

impl IpRefusal {
    pub const ALL: [Self; 16] = [
        Self::BadMac,
        Self::BadIp,
        Self::BadId,
        Self::NoKey,
        Self::OutsidePool,
        Self::Exhausted,
        Self::Quota,
        Self::Taken,
        Self::Leased,
        Self::Conflict,
        Self::Environment,
        Self::BadPage,
        Self::Mismatch,
        Self::NotFound,
        Self::Persist,
        Self::Unavailable,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMac => "bad_mac",
            Self::BadIp => "bad_ip",
            Self::BadId => "bad_id",
            Self::NoKey => "no_key",
            Self::OutsidePool => "outside_pool",
            Self::Exhausted => "exhausted",
            Self::Quota => "quota",
            Self::Taken => "taken",
            Self::Leased => "leased",
            Self::Conflict => "conflict",
            Self::Environment => "environment",
            Self::BadPage => "bad_page",
            Self::Mismatch => "mismatch",
            Self::NotFound => "not_found",
            Self::Persist => "persist",
            Self::Unavailable => "unavailable",
        }
    }

    pub fn code(self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::BadMac
            | Self::BadIp
            | Self::BadId
            | Self::NoKey
            | Self::OutsidePool
            | Self::BadPage
            | Self::Mismatch => Code::InvalidArgument,
            Self::Exhausted | Self::Quota => Code::ResourceExhausted,
            Self::Taken | Self::Conflict => Code::AlreadyExists,
            Self::Leased => Code::FailedPrecondition,
            Self::Environment => Code::PermissionDenied,
            Self::NotFound => Code::NotFound,
            Self::Persist | Self::Unavailable => Code::Unavailable,
        }
    }
}

/// A refusal and the words that explain it to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub reason: IpRefusal,
    pub message: String,
}

impl Refused {
    pub fn new(reason: IpRefusal, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A validated `AllocateIPRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocate {
    pub vps_id: String,
    pub organization_id: String,
    pub mac: Mac,
    pub ip: Option<Ipv4Addr>,
}

impl TryFrom<pb::AllocateIpRequest> for Allocate {
    type Error = Refused;

    fn try_from(r: pb::AllocateIpRequest) -> Result<Self, Refused> {
        if !valid_id(&r.vps_id) {
            return Err(Refused::new(
                IpRefusal::BadId,
                format!("vps_id {:?}: {ID_RULE}", clip(&r.vps_id)),
            ));
        }
        if !r.organization_id.is_empty() && !valid_id(&r.organization_id) {
            return Err(Refused::new(
                IpRefusal::BadId,
                format!("organization_id {:?}: {ID_RULE}", clip(&r.organization_id)),
            ));
        }
        let mac = parse_mac(&r.mac)?;
        let ip = match r.ip.as_str() {
            "" => None,
            ip => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
                Refused::new(
                    IpRefusal::BadIp,
                    format!("ip {:?} is not an IPv4 address", clip(ip)),
                )
            })?),
        };
        Ok(Self {
            vps_id: r.vps_id,
            organization_id: r.organization_id,
            mac,
            ip,
        })
    }
}

/// A validated `ReleaseIPRequest`: a VPS id, a MAC, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub vps_id: Option<String>,
    pub mac: Option<Mac>,
}

impl TryFrom<pb::ReleaseIpRequest> for Release {
    type Error = Refused;

    fn try_from(r: pb::ReleaseIpRequest) -> Result<Self, Refused> {
        if r.vps_id.is_empty() && r.mac.is_empty() {
            return Err(Refused::new(
                IpRefusal::NoKey,
                "name the reservation by vps_id or mac",
            ));
        }
        if !r.vps_id.is_empty() && !valid_id(&r.vps_id) {
            return Err(Refused::new(
                IpRefusal::BadId,
                format!("vps_id {:?}: {ID_RULE}", clip(&r.vps_id)),
            ));
        }
        let mac = (!r.mac.is_empty()).then(|| parse_mac(&r.mac)).transpose()?;
        Ok(Self {
            vps_id: (!r.vps_id.is_empty()).then_some(r.vps_id),
            mac,
        })
    }
}

const ID_RULE: &str = "expected 1 to 128 bytes of letters, digits and `._-:@/`";

fn parse_mac(mac: &str) -> Result<Mac, Refused> {
    mac.parse().map_err(|()| {
        Refused::new(
            IpRefusal::BadMac,
            format!(
                "mac {:?} is not a unicast Ethernet address such as 52:54:00:12:34:56",
                clip(mac)
            ),
        )
    })
}

/// What a caller's words may cost in a message: 64 characters.
fn clip(s: &str) -> String {
    gatemesh_dnsmasq::names::short(s, 64)
}

/// What a successful request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub reservation: Reservation,
    /// False when the table is unchanged (a repeated allocation).
    pub changed: bool,
}

/// A VPS id as DNS sees it: case does not tell two names apart, and a VPS
/// id may become the VM's hostname (see [`render`]), so two ids that
/// differ only in case are one key of the table.
fn name_key(vps_id: &str) -> String {
    vps_id.to_ascii_lowercase()
}

/// Every reservation, by address, with the two other keys indexed, and
/// how many each environment holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    by_ip: BTreeMap<Ipv4Addr, Reservation>,
    /// By [`name_key`] of the VPS id.
    by_vps: HashMap<String, Ipv4Addr>,
    by_mac: HashMap<Mac, Ipv4Addr>,
    by_env: HashMap<String, u64>,
}

impl Table {
    /// A table from reservations, refusing two that share a key.
    pub fn from_reservations(list: impl IntoIterator<Item = Reservation>) -> Result<Self, String> {
        let mut table = Self::default();
        for r in list {
            table.add(r)?;
        }
        Ok(table)
    }

    /// Adds a reservation read back, refusing one that shares a key with
    /// one already there.
    fn add(&mut self, r: Reservation) -> Result<(), String> {
        if self.by_ip.contains_key(&r.ip) {
            return Err(format!("{} is reserved twice", r.ip));
        }
        if let Some(ip) = self.by_vps.get(&name_key(&r.vps_id)) {
            let held = &self.by_ip[ip].vps_id;
            return Err(if *held == r.vps_id {
                format!("VPS {} holds two reservations", r.vps_id)
            } else {
                format!(
                    "VPS ids {held} and {} differ only in case: one DNS name",
                    r.vps_id
                )
            });
        }
        if self.by_mac.contains_key(&r.mac) {
            return Err(format!("MAC {} holds two reservations", r.mac));
        }
        self.insert(r);
        Ok(())
    }

    fn insert(&mut self, r: Reservation) {
        self.by_vps.insert(name_key(&r.vps_id), r.ip);
        self.by_mac.insert(r.mac, r.ip);
        *self.by_env.entry(r.environment.clone()).or_default() += 1;
        self.by_ip.insert(r.ip, r);
    }

    fn remove(&mut self, ip: Ipv4Addr) -> Option<Reservation> {
        let r = self.by_ip.remove(&ip)?;
        self.by_vps.remove(&name_key(&r.vps_id));
        self.by_mac.remove(&r.mac);
        if let Some(n) = self.by_env.get_mut(&r.environment) {
            *n -= 1;
            if *n == 0 {
                self.by_env.remove(&r.environment);
            }
        }
        Some(r)
    }

    /// Reservations `environment` holds, in the pool or not.
    pub fn held_by(&self, environment: &str) -> u64 {
        self.by_env.get(environment).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }

    /// Sorted by address.
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.by_ip.values()
    }

    /// Reservations after `after`, sorted by address.
    pub fn after(&self, after: Option<Ipv4Addr>) -> impl Iterator<Item = &Reservation> {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.by_ip.range((from, Bound::Unbounded)).map(|(_, r)| r)
    }

    pub fn get(&self, ip: Ipv4Addr) -> Option<&Reservation> {
        self.by_ip.get(&ip)
    }

    /// Addresses of `pool` reserved.
    pub fn used(&self, pool: &Pool) -> u64 {
        self.by_ip.keys().filter(|ip| pool.contains(**ip)).count() as u64
    }

    /// Reserves an address for `req`, or answers the one the VPS already
    /// holds. `leased` maps addresses of active leases to their MAC: an
    /// address leased to another MAC is never handed out. `quota` is how
    /// many `environment` may hold at most (`None`: no limit).
    pub fn allocate(
        &mut self,
        pool: &Pool,
        req: &Allocate,
        environment: &str,
        leased: &HashMap<Ipv4Addr, Mac>,
        now: u64,
        quota: Option<u64>,
    ) -> Result<Done, Refused> {
        if let Some(ip) = self.by_vps.get(&name_key(&req.vps_id)) {
            let held = &self.by_ip[ip];
            if held.vps_id != req.vps_id {
                return Err(Refused::new(
                    IpRefusal::Conflict,
                    format!(
                        "VPS {} differs only in case from VPS {}, which holds {}: DNS would \
                         give both one name",
                        req.vps_id, held.vps_id, held.ip
                    ),
                ));
            }
            if held.mac != req.mac {
                return Err(Refused::new(
                    IpRefusal::Conflict,
                    format!(
                        "VPS {} already holds {} for MAC {}, not {}",
                        req.vps_id, held.ip, held.mac, req.mac
                    ),
                ));
            }
            if held.environment != environment {
                return Err(Refused::new(
                    IpRefusal::Environment,
                    format!(
                        "VPS {} holds {} for environment {:?}",
                        req.vps_id, held.ip, held.environment
                    ),
                ));
            }
            if req.ip.is_some_and(|ip| ip != held.ip) {
                return Err(Refused::new(
                    IpRefusal::Conflict,
                    format!("VPS {} already holds {}", req.vps_id, held.ip),
                ));
            }
            return Ok(Done {
                reservation: held.clone(),
                changed: false,
            });
        }
        if let Some(ip) = self.by_mac.get(&req.mac) {
            let held = &self.by_ip[ip];
            return Err(Refused::new(
                IpRefusal::Conflict,
                format!(
                    "MAC {} already holds {} for VPS {}",
                    req.mac, held.ip, held.vps_id
                ),
            ));
        }
        let held = self.held_by(environment);
        if let Some(quota) = quota
            && held >= quota
        {
            return Err(Refused::new(
                IpRefusal::Quota,
                format!(
                    "environment {environment:?} holds {held} addresses, its quota \
                     (GATEWAY_IP_QUOTA); release one first"
                ),
            ));
        }
        let free = |ip: &Ipv4Addr| {
            !self.by_ip.contains_key(ip) && leased.get(ip).is_none_or(|mac| *mac == req.mac)
        };
        let ip = match req.ip {
            Some(ip) => {
                if !pool.contains(ip) {
                    return Err(Refused::new(
                        IpRefusal::OutsidePool,
                        format!("{ip} is outside this gateway's pool ({pool})"),
                    ));
                }
                if let Some(other) = self.by_ip.get(&ip) {
                    return Err(Refused::new(
                        IpRefusal::Taken,
                        format!("{ip} is reserved for VPS {}", other.vps_id),
                    ));
                }
                if !free(&ip) {
                    return Err(Refused::new(
                        IpRefusal::Leased,
                        format!("{ip} is held by an active lease of another MAC"),
                    ));
                }
                ip
            }
            None => pool.iter().find(free).ok_or_else(|| {
                Refused::new(
                    IpRefusal::Exhausted,
                    format!(
                        "the pool ({pool}) is exhausted: {} of {} addresses reserved, the rest leased",
                        self.used(pool),
                        pool.size()
                    ),
                )
            })?,
        };
        let reservation = Reservation {
            ip,
            mac: req.mac,
            vps_id: req.vps_id.clone(),
            organization_id: req.organization_id.clone(),
            environment: environment.to_string(),
            allocated_at: now,
        };
        self.insert(reservation.clone());
        Ok(Done {
            reservation,
            changed: true,
        })
    }

    /// Frees the reservation `req` names. Another environment's is refused
    /// unless `any_environment`.
    pub fn release(
        &mut self,
        req: &Release,
        environment: &str,
        any_environment: bool,
    ) -> Result<Done, Refused> {
        let missing = |what: String| {
            Refused::new(
                IpRefusal::NotFound,
                format!("no address is reserved for {what}"),
            )
        };
        let by_vps = match &req.vps_id {
            Some(v) => Some(
                self.by_vps
                    .get(&name_key(v))
                    .copied()
                    .filter(|ip| self.by_ip[ip].vps_id == *v)
                    .ok_or_else(|| missing(format!("VPS {v}")))?,
            ),
            None => None,
        };
        let by_mac = match req.mac {
            Some(m) => Some(
                self.by_mac
                    .get(&m)
                    .copied()
                    .ok_or_else(|| missing(format!("MAC {m}")))?,
            ),
            None => None,
        };
        let ip = match (by_vps, by_mac) {
            (Some(a), Some(b)) if a != b => {
                return Err(Refused::new(
                    IpRefusal::Mismatch,
                    format!("vps_id and mac name different reservations ({a} and {b})"),
                ));
            }
            (Some(ip), _) | (_, Some(ip)) => ip,
            (None, None) => {
                return Err(Refused::new(
                    IpRefusal::NoKey,
                    "name the reservation by vps_id or mac",
                ));
            }
        };
        let held = &self.by_ip[&ip];
        if held.environment != environment && !any_environment {
            return Err(Refused::new(
                IpRefusal::Environment,
                format!(
                    "{} was allocated by environment {:?}; only it may release it",
                    ip, held.environment
                ),
            ));
        }
        let r = self.remove(ip).expect("indexed");
        Ok(Done {
            reservation: r,
            changed: true,
        })
    }
}

/// First line of the reservations file.
pub const HEADER: &str = "# written by vps-gateway's IP allocator; edits are overwritten\n";

/// The tag of a line that holds a reservation's record.
const RECORD: &str = "# gatemesh-ipam v1 ";

/// Whether `vps_id` may be the VM's DHCP hostname in dnsmasq's file: a DNS
/// label starting with a letter (dnsmasq reads a field of digits as a lease
/// time) inside the VPS namespace, and not one of dnsmasq's keywords.
fn hostname<'a>(vps_id: &'a str, prefix: &str) -> Option<&'a str> {
    let lower = vps_id.to_ascii_lowercase();
    (gatemesh_dnsmasq::names::is_dns_name(vps_id)
        && !vps_id.contains('.')
        && vps_id.starts_with(|c: char| c.is_ascii_alphabetic())
        && lower.starts_with(&prefix.to_ascii_lowercase())
        && !matches!(lower.as_str(), "ignore" | "infinite"))
    .then_some(vps_id)
}

/// How an organization or environment is written: `-` when empty, and
/// a value that is `-` itself (a valid id) as [`DASH`], so the two read
/// back apart.
fn token(value: &str) -> &str {
    match value {
        "" => "-",
        "-" => DASH,
        value => value,
    }
}

/// A value that is `-` itself; `%` is no id's character.
const DASH: &str = "%2D";

/// The file: dnsmasq reads it as a `dhcp-hostsfile` (`<mac>,<ip>[,<host>]`
/// per reservation, `#` lines are comments to it), and the allocator reads
/// back only the record comment above each line, which holds everything.
/// Sorted by address, so equal tables give equal bytes.
pub fn render(table: &Table, hostname_prefix: &str) -> String {
    let mut out = String::with_capacity(HEADER.len() + table.len() * 160);
    out.push_str(HEADER);
    for r in table.iter() {
        let (org, env) = (token(&r.organization_id), token(&r.environment));
        out.push_str(&format!(
            "{RECORD}ip={} mac={} vps={} org={org} env={env} at={}\n{},{}",
            r.ip, r.mac, r.vps_id, r.allocated_at, r.mac, r.ip
        ));
        if let Some(host) = hostname(&r.vps_id, hostname_prefix) {
            out.push(',');
            out.push_str(host);
        }
        out.push('\n');
    }
    out
}

/// The table a file holds. Anything but a record comment is dnsmasq's
/// (derived) line and skipped; a record that does not parse, or two that
/// share a key, is an error naming the line: a reservation is never
/// dropped on a guess.
pub fn parse(text: &str) -> Result<Table, String> {
    let mut table = Table::default();
    for (n, line) in text.lines().enumerate() {
        let Some(record) = line.strip_prefix(RECORD) else {
            continue;
        };
        let bad = |why: &str| format!("line {}: {why}", n + 1);
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for pair in record.split(' ') {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            if fields.insert(k, v).is_some() {
                return Err(bad(&format!("{k} given twice")));
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| bad(&format!("no {k}")))
        };
        let id = |k: &str| -> Result<String, String> {
            match get(k)? {
                "-" if k != "vps" => Ok(String::new()),
                DASH if k != "vps" => Ok("-".into()),
                v if valid_id(v) => Ok(v.to_string()),
                _ => Err(bad(&format!("bad {k}"))),
            }
        };
        let reservation = Reservation {
            ip: get("ip")?.parse().map_err(|_| bad("bad ip"))?,
            mac: get("mac")?.parse().map_err(|()| bad("bad mac"))?,
            vps_id: id("vps")?,
            organization_id: id("org")?,
            environment: id("env")?,
            allocated_at: get("at")?.parse().map_err(|_| bad("bad at"))?,
        };
        table.add(reservation).map_err(|e| bad(&e))?;
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(spec: &str) -> Pool {
        Pool::parse(spec, "").unwrap()
    }

    fn req(vps: &str, mac: &str, ip: Option<&str>) -> Allocate {
        Allocate {
            vps_id: vps.into(),
            organization_id: "org-1".into(),
            mac: mac.parse().unwrap(),
            ip: ip.map(|ip| ip.parse().unwrap()),
        }
    }

    fn release_vps(vps: &str) -> Release {
        Release {
            vps_id: Some(vps.into()),
            mac: None,
        }
    }

    const MAC1: &str = "52:54:00:00:00:01";
    const MAC2: &str = "52:54:00:00:00:02";
    const MAC3: &str = "52:54:00:00:00:03";

    #[test]
    fn macs_and_requests_are_validated_into_types() {
        let mac: Mac = "52-54-00-AB-cd-01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:ab:cd:011",
            "5:254:00:ab:cd:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let refused = |r: pb::AllocateIpRequest| Allocate::try_from(r).unwrap_err().reason;
        let ok = pb::AllocateIpRequest {
            vps_id: "vps-1".into(),
            organization_id: String::new(),
            mac: MAC1.into(),
            ip: String::new(),
        };
        assert!(Allocate::try_from(ok.clone()).is_ok());
        for (r, why) in [
            (
                pb::AllocateIpRequest {
                    mac: "nope".into(),
                    ..ok.clone()
                },
                IpRefusal::BadMac,
            ),
            (
                pb::AllocateIpRequest {
                    ip: "10.0.0.256".into(),
                    ..ok.clone()
                },
                IpRefusal::BadIp,
            ),
            (
                pb::AllocateIpRequest {
                    ip: "fd00::1".into(),
                    ..ok.clone()
                },
                IpRefusal::BadIp,
            ),
            (
                pb::AllocateIpRequest {
                    vps_id: String::new(),
                    ..ok.clone()
                },
                IpRefusal::BadId,
            ),
            (
                pb::AllocateIpRequest {
                    vps_id: "vps 1\nx".into(),
                    ..ok.clone()
                },
                IpRefusal::BadId,
            ),
            (
                pb::AllocateIpRequest {
                    organization_id: "a=b".into(),
                    ..ok.clone()
                },
                IpRefusal::BadId,
            ),
        ] {
            assert_eq!(refused(r), why);
            assert_eq!(why.code(), tonic::Code::InvalidArgument);
        }
        let e = Release::try_from(pb::ReleaseIpRequest::default()).unwrap_err();
        assert_eq!(e.reason, IpRefusal::NoKey);
    }

    #[test]
    fn allocation_is_idempotent_per_vps_and_mac_and_refuses_clashes() {
        let pool = pool("10.0.0.10-10.0.0.12");
        let mut t = Table::default();
        let none = HashMap::new();
        let a = t
            .allocate(&pool, &req("vps-a", MAC1, None), "prod", &none, 1, None)
            .unwrap();
        assert_eq!(a.reservation.ip.to_string(), "10.0.0.10");
        assert!(a.changed);
        let again = t
            .allocate(&pool, &req("vps-a", MAC1, None), "prod", &none, 2, None)
            .unwrap();
        assert_eq!(
            again.reservation, a.reservation,
            "a retry answers the same address"
        );
        assert!(!again.changed);
        let same_ip = req("vps-a", MAC1, Some("10.0.0.10"));
        assert!(
            !t.allocate(&pool, &same_ip, "prod", &none, 3, None)
                .unwrap()
                .changed
        );
        let why = |t: &mut Table, r: Allocate, env: &str| {
            t.allocate(&pool, &r, env, &none, 4, None)
                .unwrap_err()
                .reason
        };
        assert_eq!(
            why(&mut t, req("vps-a", MAC2, None), "prod"),
            IpRefusal::Conflict
        );
        assert_eq!(
            why(&mut t, req("vps-b", MAC1, None), "prod"),
            IpRefusal::Conflict
        );
        assert_eq!(
            why(&mut t, req("vps-a", MAC1, Some("10.0.0.11")), "prod"),
            IpRefusal::Conflict
        );
        assert_eq!(
            why(&mut t, req("vps-a", MAC1, None), "beta"),
            IpRefusal::Environment
        );
        assert_eq!(
            why(&mut t, req("vps-b", MAC2, Some("10.0.0.10")), "prod"),
            IpRefusal::Taken
        );
        assert_eq!(
            why(&mut t, req("vps-b", MAC2, Some("10.0.0.13")), "prod"),
            IpRefusal::OutsidePool
        );
        let b = t
            .allocate(
                &pool,
                &req("vps-b", MAC2, Some("10.0.0.12")),
                "beta",
                &none,
                5,
                None,
            )
            .unwrap();
        assert_eq!(b.reservation.ip.to_string(), "10.0.0.12");
        assert_eq!(b.reservation.environment, "beta");
        t.allocate(&pool, &req("vps-c", MAC3, None), "prod", &none, 6, None)
            .unwrap();
        let full = t
            .allocate(
                &pool,
                &req("vps-d", "52:54:00:00:00:04", None),
                "prod",
                &none,
                7,
                None,
            )
            .unwrap_err();
        assert_eq!(full.reason, IpRefusal::Exhausted);
        assert_eq!(full.reason.code(), tonic::Code::ResourceExhausted);
        assert!(full.message.contains("3 of 3"), "{}", full.message);
    }

    #[test]
    fn an_address_leased_to_another_mac_is_never_handed_out() {
        let pool = pool("10.0.0.10-10.0.0.11");
        let mut t = Table::default();
        let leased: HashMap<Ipv4Addr, Mac> =
            [("10.0.0.10".parse().unwrap(), MAC2.parse().unwrap())].into();
        let a = t
            .allocate(&pool, &req("vps-a", MAC1, None), "prod", &leased, 1, None)
            .unwrap();
        assert_eq!(
            a.reservation.ip.to_string(),
            "10.0.0.11",
            "10 is leased to MAC2"
        );
        let e = t
            .allocate(
                &pool,
                &req("vps-c", MAC3, Some("10.0.0.10")),
                "prod",
                &leased,
                1,
                None,
            )
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Leased);
        // The lease holder itself may have its address.
        let b = t
            .allocate(
                &pool,
                &req("vps-b", MAC2, Some("10.0.0.10")),
                "prod",
                &leased,
                1,
                None,
            )
            .unwrap();
        assert_eq!(b.reservation.ip.to_string(), "10.0.0.10");
    }

    #[test]
    fn release_by_vps_or_mac_checks_the_environment() {
        let pool = pool("10.0.0.10-10.0.0.20");
        let mut t = Table::default();
        let none = HashMap::new();
        t.allocate(&pool, &req("vps-a", MAC1, None), "prod", &none, 1, None)
            .unwrap();
        t.allocate(&pool, &req("vps-b", MAC2, None), "prod", &none, 1, None)
            .unwrap();
        let e = t.release(&release_vps("vps-a"), "beta", false).unwrap_err();
        assert_eq!(e.reason, IpRefusal::Environment);
        assert_eq!(e.reason.code(), tonic::Code::PermissionDenied);
        let both = Release {
            vps_id: Some("vps-a".into()),
            mac: Some(MAC2.parse().unwrap()),
        };
        assert_eq!(
            t.release(&both, "prod", false).unwrap_err().reason,
            IpRefusal::Mismatch
        );
        let by_mac = Release {
            vps_id: None,
            mac: Some(MAC1.parse().unwrap()),
        };
        assert_eq!(
            t.release(&by_mac, "prod", false)
                .unwrap()
                .reservation
                .vps_id,
            "vps-a"
        );
        let again = t.release(&release_vps("vps-a"), "prod", false).unwrap_err();
        assert_eq!(again.reason, IpRefusal::NotFound);
        assert_eq!(again.reason.code(), tonic::Code::NotFound);
        assert!(
            t.release(&release_vps("vps-b"), "beta", true).is_ok(),
            "configured otherwise"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn the_file_is_a_dhcp_hostsfile_that_round_trips() {
        let pool = pool("10.0.0.10-10.0.0.20");
        let mut t = Table::default();
        let none = HashMap::new();
        t.allocate(
            &pool,
            &req("vps-a", MAC1, None),
            "prod",
            &none,
            1_700_000_000,
            None,
        )
        .unwrap();
        let odd = Allocate {
            organization_id: String::new(),
            ..req("42", MAC2, None)
        };
        t.allocate(&pool, &odd, "", &none, 5, None).unwrap();
        let text = render(&t, "vps-");
        assert_eq!(
            text,
            format!(
                "{HEADER}{RECORD}ip=10.0.0.10 mac={MAC1} vps=vps-a org=org-1 env=prod at=1700000000\n\
                 {MAC1},10.0.0.10,vps-a\n\
                 {RECORD}ip=10.0.0.11 mac={MAC2} vps=42 org=- env=- at=5\n\
                 {MAC2},10.0.0.11\n"
            ),
            "a hostname only when it is a VPS name dnsmasq cannot misread"
        );
        assert_eq!(parse(&text).unwrap(), t);
        assert_eq!(parse("").unwrap(), Table::default());
        let clash = format!("{text}{RECORD}ip=10.0.0.10 mac={MAC3} vps=vps-c org=- env=- at=1\n");
        assert!(parse(&clash).unwrap_err().contains("reserved twice"));
        let bad = format!("{RECORD}ip=10.0.0.300 mac={MAC3} vps=vps-c org=- env=- at=1\n");
        assert!(parse(&bad).unwrap_err().starts_with("line 1: bad ip"));
    }

    #[test]
    fn an_empty_value_and_a_dash_read_back_apart() {
        let pool = pool("10.0.0.10-10.0.0.20");
        let mut t = Table::default();
        let none = HashMap::new();
        let dash = Allocate {
            organization_id: "-".into(),
            ..req("vps-a", MAC1, None)
        };
        t.allocate(&pool, &dash, "-", &none, 1, None).unwrap();
        let empty = Allocate {
            organization_id: String::new(),
            ..req("vps-b", MAC2, None)
        };
        t.allocate(&pool, &empty, "", &none, 2, None).unwrap();
        let text = render(&t, "vps-");
        assert!(text.contains("vps=vps-a org=%2D env=%2D at=1\n"), "{text}");
        assert!(text.contains("vps=vps-b org=- env=- at=2\n"), "{text}");
        let back = parse(&text).unwrap();
        assert_eq!(back, t);
        let a = back.get("10.0.0.10".parse().unwrap()).unwrap();
        assert_eq!(
            (a.organization_id.as_str(), a.environment.as_str()),
            ("-", "-")
        );
        assert_eq!(back.held_by("-"), 1);
        assert_eq!(back.held_by(""), 1);
    }

    #[test]
    fn a_record_with_a_key_given_twice_is_refused_naming_the_line() {
        for dup in [
            "ip=10.0.0.11",
            "env=dev",
            "vps=vps-b",
            "mac=52:54:00:00:00:09",
        ] {
            let text = format!(
                "{HEADER}{RECORD}ip=10.0.0.10 mac={MAC1} vps=vps-a org=- env=prod at=1 {dup}\n"
            );
            let e = parse(&text).unwrap_err();
            let key = dup.split('=').next().unwrap();
            assert_eq!(e, format!("line 2: {key} given twice"));
        }
    }

    #[test]
    fn vps_ids_that_differ_only_in_case_are_one_name() {
        let pool = pool("10.0.0.10-10.0.0.20");
        let mut t = Table::default();
        let none = HashMap::new();
        t.allocate(&pool, &req("vps-web", MAC1, None), "prod", &none, 1, None)
            .unwrap();
        let e = t
            .allocate(&pool, &req("VPS-Web", MAC2, None), "dev", &none, 2, None)
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Conflict);
        assert!(e.message.contains("differs only in case"), "{}", e.message);
        // Released only under its own spelling.
        let other = t
            .release(&release_vps("VPS-WEB"), "prod", false)
            .unwrap_err();
        assert_eq!(other.reason, IpRefusal::NotFound);
        assert_eq!(t.len(), 1);
        // A file holding both (an older gateway's) stops the start.
        let text = format!(
            "{HEADER}{RECORD}ip=10.0.0.10 mac={MAC1} vps=vps-web org=- env=prod at=1\n\
             {RECORD}ip=10.0.0.11 mac={MAC2} vps=VPS-Web org=- env=dev at=1\n"
        );
        assert_eq!(
            parse(&text).unwrap_err(),
            "line 3: VPS ids vps-web and VPS-Web differ only in case: one DNS name"
        );
        t.release(&release_vps("vps-web"), "prod", false).unwrap();
        t.allocate(&pool, &req("VPS-Web", MAC2, None), "dev", &none, 3, None)
            .unwrap();
    }

    #[test]
    fn an_environment_at_its_quota_is_refused_but_answered_for_what_it_holds() {
        let pool = pool("10.0.0.10-10.0.0.20");
        let mut t = Table::default();
        let none = HashMap::new();
        for (vps, mac) in [("vps-a", MAC1), ("vps-b", MAC2)] {
            t.allocate(&pool, &req(vps, mac, None), "dev", &none, 1, Some(2))
                .unwrap();
        }
        let again = t
            .allocate(&pool, &req("vps-a", MAC1, None), "dev", &none, 2, Some(2))
            .unwrap();
        assert!(!again.changed, "a retry is answered at the quota");
        let e = t
            .allocate(&pool, &req("vps-c", MAC3, None), "dev", &none, 3, Some(2))
            .unwrap_err();
        assert_eq!(e.reason, IpRefusal::Quota);
        assert_eq!(e.reason.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message.contains("environment \"dev\" holds 2"),
            "{}",
            e.message
        );
        t.allocate(&pool, &req("vps-c", MAC3, None), "prod", &none, 3, Some(2))
            .unwrap();
        assert_eq!((t.held_by("dev"), t.held_by("prod")), (2, 1));
        t.release(&release_vps("vps-a"), "dev", false).unwrap();
        assert_eq!(t.held_by("dev"), 1);
        t.allocate(
            &pool,
            &req("vps-d", "52:54:00:00:00:04", None),
            "dev",
            &none,
            4,
            Some(2),
        )
        .unwrap();
    }

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Step {
        Allocate { vps: u8, ip: Option<u8>, env: bool },
        Release { vps: u8, by_mac: bool, env: bool },
        Lease { ip: u8, mac: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..24, proptest::option::of(0u8..20), any::<bool>())
                .prop_map(|(vps, ip, env)| Step::Allocate { vps, ip, env }),
            2 => (0u8..24, any::<bool>(), any::<bool>())
                .prop_map(|(vps, by_mac, env)| Step::Release { vps, by_mac, env }),
            1 => (0u8..20, 0u8..40).prop_map(|(ip, mac)| Step::Lease { ip, mac }),
        ]
    }

    fn mac_of(n: u8) -> Mac {
        format!("52:54:00:00:01:{n:02x}").parse().unwrap()
    }

    proptest! {
        /// Any history: no address, VPS or MAC is held twice; every
        /// reservation is in the pool and was free of other MACs' leases
        /// when made; a repeated allocation answers the same address; the
        /// file gives back the same table.
        #[test]
        fn no_history_breaks_the_invariants(steps in proptest::collection::vec(step(), 1..120)) {
            let pool = Pool::parse("10.9.0.1-10.9.0.16", "10.9.0.5").unwrap();
            let mut t = Table::default();
            let mut leased: HashMap<Ipv4Addr, Mac> = HashMap::new();
            let env = |b: bool| if b { "prod" } else { "beta" };
            for (now, s) in steps.into_iter().enumerate() {
                match s {
                    Step::Allocate { vps, ip, env: e } => {
                        let r = Allocate {
                            vps_id: format!("vps-{vps}"),
                            organization_id: String::new(),
                            mac: mac_of(vps),
                            ip: ip.map(|i| Ipv4Addr::new(10, 9, 0, i)),
                        };
                        let before = t.clone();
                        match t.allocate(&pool, &r, env(e), &leased, now as u64, None) {
                            Ok(done) => {
                                let ip = done.reservation.ip;
                                prop_assert!(pool.contains(ip));
                                // A new reservation never takes another
                                // MAC's leased address (an old one is kept).
                                prop_assert!(!done.changed || leased.get(&ip).is_none_or(|m| *m == r.mac));
                                prop_assert_eq!(done.reservation.mac, r.mac);
                                if let Some(held) = before.by_vps.get(&r.vps_id) {
                                    prop_assert_eq!(*held, ip);
                                    prop_assert!(!done.changed);
                                    prop_assert_eq!(&before, &t);
                                } else {
                                    prop_assert!(before.get(ip).is_none(), "{} handed out twice", ip);
                                }
                                let again = t.allocate(&pool, &r, env(e), &leased, 0, None).unwrap();
                                prop_assert_eq!(again.reservation.ip, ip);
                                prop_assert!(!again.changed);
                            }
                            Err(_) => prop_assert_eq!(&before, &t, "a refusal changes nothing"),
                        }
                    }
                    Step::Release { vps, by_mac, env: e } => {
                        let r = if by_mac {
                            Release { vps_id: None, mac: Some(mac_of(vps)) }
                        } else {
                            Release { vps_id: Some(format!("vps-{vps}")), mac: None }
                        };
                        let before = t.clone();
                        match t.release(&r, env(e), false) {
                            Ok(done) => {
                                prop_assert_eq!(&done.reservation.environment, env(e));
                                prop_assert!(t.get(done.reservation.ip).is_none());
                            }
                            Err(_) => prop_assert_eq!(&before, &t),
                        }
                    }
                    Step::Lease { ip, mac } => {
                        leased.insert(Ipv4Addr::new(10, 9, 0, ip), mac_of(mac));
                    }
                }
                let mut ips: Vec<_> = t.iter().map(|r| r.ip).collect();
                ips.dedup();
                prop_assert_eq!(ips.len(), t.len());
                prop_assert_eq!(t.by_vps.len(), t.len());
                prop_assert_eq!(t.by_mac.len(), t.len());
                for r in t.iter() {
                    prop_assert_eq!(t.by_vps[&r.vps_id], r.ip);
                    prop_assert_eq!(t.by_mac[&r.mac], r.ip);
                }
            }
            prop_assert_eq!(&parse(&render(&t, "vps-")).unwrap(), &t);
        }
    }
}
