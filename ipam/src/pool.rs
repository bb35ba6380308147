//! The addresses one gateway may hand out: ranges of IPv4 addresses from
//! `GATEWAY_IP_POOL`, less `GATEWAY_IP_POOL_EXCLUDE` and the node's own.
//!
//! A CIDR block in the pool gives its hosts only: its network and
//! broadcast addresses are no VM's (dnsmasq would offer them all the same).
//! A /31 or /32 has neither (RFC 3021), so it gives every address.

use std::fmt;
use std::net::Ipv4Addr;

/// Largest pool, in addresses: a /16. A node holds far fewer VMs, and the
/// bound keeps every scan of the pool short.
pub const MAX_POOL: u64 = 65_536;

/// Why a pool setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{0:?} is not an IPv4 address, a range `a-b` or a CIDR block `a/n`")]
    Syntax(String),
    #[error("the range {0:?} ends before it starts")]
    Backwards(String),
    #[error("the pool holds no address once exclusions are taken out")]
    Empty,
    #[error("the pool holds {0} addresses; at most {MAX_POOL}")]
    TooLarge(u64),
}

/// Sorted, merged, non-overlapping inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    ranges: Vec<(u32, u32)>,
    /// The setting, as given, for `ListIPs`.
    spec: Vec<String>,
    size: u64,
}

/// How a CIDR block is read: every address (an exclusion), or its hosts
/// (the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Whole,
    Hosts,
}

fn parse_item(item: &str, block: Block) -> Result<(u32, u32), PoolError> {
    let syntax = || PoolError::Syntax(item.to_string());
    let addr = |s: &str| {
        s.trim()
            .parse::<Ipv4Addr>()
            .map(u32::from)
            .map_err(|_| syntax())
    };
    if let Some((a, b)) = item.split_once('-') {
        let (a, b) = (addr(a)?, addr(b)?);
        if b < a {
            return Err(PoolError::Backwards(item.to_string()));
        }
        Ok((a, b))
    } else if let Some((a, bits)) = item.split_once('/') {
        let bits: u32 = bits
            .trim()
            .parse()
            .ok()
            .filter(|b| *b <= 32)
            .ok_or_else(syntax)?;
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        let net = addr(a)? & mask;
        match block {
            Block::Hosts if bits <= 30 => Ok((net + 1, (net | !mask) - 1)),
            _ => Ok((net, net | !mask)),
        }
    } else {
        let a = addr(item)?;
        Ok((a, a))
    }
}

/// `10.0.0.50-10.0.0.250, 10.0.1.0/28, 10.0.2.7` as merged ranges.
fn parse_list(list: &str, block: Block) -> Result<Vec<(u32, u32)>, PoolError> {
    let ranges = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| parse_item(item, block))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge(ranges))
}

fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// `include` less `exclude`, both merged.
fn subtract(include: &[(u32, u32)], exclude: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut ranges = Vec::new();
    for &(a, b) in include {
        let (mut a, b) = (u64::from(a), u64::from(b));
        for &(xa, xb) in exclude {
            let (xa, xb) = (u64::from(xa), u64::from(xb));
            if xb < a || xa > b {
                continue;
            }
            if xa > a {
                ranges.push((a as u32, (xa - 1) as u32));
            }
            a = xb + 1;
            if a > b {
                break;
            }
        }
        if a <= b {
            ranges.push((a as u32, b as u32));
        }
    }
    ranges
}

impl Pool {
    /// The pool `include` less `exclude`, both in the `GATEWAY_IP_POOL`
    /// syntax.
    pub fn parse(include: &str, exclude: &str) -> Result<Self, PoolError> {
        let ranges = subtract(
            &parse_list(include, Block::Hosts)?,
            &parse_list(exclude, Block::Whole)?,
        );
        let spec = include
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Self::new(ranges, spec)
    }

    fn new(ranges: Vec<(u32, u32)>, spec: Vec<String>) -> Result<Self, PoolError> {
        let size: u64 = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        if size == 0 {
            return Err(PoolError::Empty);
        }
        if size > MAX_POOL {
            return Err(PoolError::TooLarge(size));
        }
        Ok(Self { ranges, spec, size })
    }

    /// The pool less `addresses` (the node's own), and those of them it
    /// held, lowest first.
    pub fn without(&self, addresses: &[Ipv4Addr]) -> Result<(Self, Vec<Ipv4Addr>), PoolError> {
        let mut taken: Vec<Ipv4Addr> = addresses
            .iter()
            .copied()
            .filter(|ip| self.contains(*ip))
            .collect();
        taken.sort_unstable();
        taken.dedup();
        let exclude = merge(
            taken
                .iter()
                .map(|ip| (u32::from(*ip), u32::from(*ip)))
                .collect(),
        );
        let pool = Self::new(subtract(&self.ranges, &exclude), self.spec.clone())?;
        Ok((pool, taken))
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// The ranges as configured (before exclusions).
    pub fn spec(&self) -> &[String] {
        &self.spec
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let i = self.ranges.partition_point(|(_, b)| *b < ip);
        self.ranges.get(i).is_some_and(|(a, _)| *a <= ip)
    }

    /// Every address, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ranges
            .iter()
            .flat_map(|&(a, b)| (a..=b).map(Ipv4Addr::from))
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(pool: &Pool) -> Vec<String> {
        pool.iter().map(|ip| ip.to_string()).collect()
    }

    #[test]
    fn ranges_blocks_and_single_addresses_merge_and_exclude() {
        let pool = Pool::parse("10.0.0.5-10.0.0.8, 10.0.0.7-10.0.0.9,10.0.1.0/30", "").unwrap();
        assert_eq!(pool.size(), 7, "5 to 9, and the /30's two hosts");
        assert_eq!(ips(&pool)[..2], ["10.0.0.5", "10.0.0.6"]);
        assert!(pool.contains("10.0.1.2".parse().unwrap()));
        assert!(!pool.contains("10.0.1.3".parse().unwrap()));
        let pool = Pool::parse(
            "10.0.0.1-10.0.0.10",
            "10.0.0.1,10.0.0.4-10.0.0.5, 10.0.0.10",
        )
        .unwrap();
        assert_eq!(
            ips(&pool),
            [
                "10.0.0.2", "10.0.0.3", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"
            ]
        );
        assert!(!pool.contains("10.0.0.4".parse().unwrap()));
        assert_eq!(pool.spec(), ["10.0.0.1-10.0.0.10"]);
    }

    #[test]
    fn a_cidr_block_gives_its_hosts_and_an_excluded_one_takes_every_address() {
        let pool = Pool::parse("10.9.0.0/24", "").unwrap();
        assert_eq!(pool.size(), 254);
        let all = ips(&pool);
        assert_eq!(
            (all[0].as_str(), all[253].as_str()),
            ("10.9.0.1", "10.9.0.254"),
            "never the network (.0) or the broadcast (.255) address"
        );
        assert!(!pool.contains("10.9.0.0".parse().unwrap()));
        assert!(!pool.contains("10.9.0.255".parse().unwrap()));
        // Two adjacent blocks: each its own subnet, each without its edges.
        let pool = Pool::parse("10.9.0.0/25,10.9.0.128/25", "").unwrap();
        assert_eq!(pool.size(), 252);
        assert!(!pool.contains("10.9.0.127".parse().unwrap()));
        assert!(!pool.contains("10.9.0.128".parse().unwrap()));
        // A /31 and a /32 have no network or broadcast address.
        assert_eq!(
            ips(&Pool::parse("10.9.1.0/31", "").unwrap()),
            ["10.9.1.0", "10.9.1.1"]
        );
        assert_eq!(ips(&Pool::parse("10.9.1.7/32", "").unwrap()), ["10.9.1.7"]);
        // A range is taken as written; an excluded block takes all of it.
        assert_eq!(Pool::parse("10.9.2.0-10.9.2.255", "").unwrap().size(), 256);
        assert_eq!(
            ips(&Pool::parse("10.9.3.0-10.9.3.9", "10.9.3.0/30").unwrap())[0],
            "10.9.3.4"
        );
        assert_eq!(Pool::parse("10.9.4.0/30", "").unwrap().size(), 2);
    }

    #[test]
    fn the_nodes_own_addresses_come_out_of_the_pool() {
        let pool = Pool::parse("10.9.0.0/29", "").unwrap();
        let own: Vec<Ipv4Addr> = ["127.0.0.1", "10.9.0.6", "10.9.0.1", "10.9.0.6"]
            .map(|ip| ip.parse().unwrap())
            .to_vec();
        let (less, taken) = pool.without(&own).unwrap();
        assert_eq!(
            taken,
            [
                "10.9.0.1".parse::<Ipv4Addr>().unwrap(),
                "10.9.0.6".parse().unwrap()
            ]
        );
        assert_eq!(ips(&less), ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5"]);
        assert_eq!(less.spec(), pool.spec());
        let single = Pool::parse("10.9.0.1", "").unwrap();
        assert_eq!(single.without(&own), Err(PoolError::Empty));
    }

    #[test]
    fn bad_pools_say_why() {
        assert!(matches!(
            Pool::parse("10.0.0.9-10.0.0.1", ""),
            Err(PoolError::Backwards(_))
        ));
        assert!(matches!(
            Pool::parse("10.0.0.300", ""),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            Pool::parse("fd00::1", ""),
            Err(PoolError::Syntax(_))
        ));
        assert!(matches!(
            Pool::parse("10.0.0.0/33", ""),
            Err(PoolError::Syntax(_))
        ));
        assert_eq!(
            Pool::parse("10.0.0.1", "10.0.0.0/24"),
            Err(PoolError::Empty)
        );
        assert_eq!(Pool::parse("", ""), Err(PoolError::Empty));
        assert_eq!(
            Pool::parse("10.0.0.0/15", ""),
            Err(PoolError::TooLarge(131_070))
        );
        assert_eq!(Pool::parse("10.0.0.0/16", "").unwrap().size(), 65_534);
        assert_eq!(
            Pool::parse("10.0.0.0-10.0.255.255", "").unwrap().size(),
            65_536
        );
    }
}
