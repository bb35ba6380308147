//! The addresses one gateway may hand out: ranges of IPv4 addresses from
//! `GATEWAY_IP_POOL`, less `GATEWAY_IP_POOL_EXCLUDE`.

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

fn parse_item(item: &str) -> Result<(u32, u32), PoolError> {
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
        Ok((net, net | !mask))
    } else {
        let a = addr(item)?;
        Ok((a, a))
    }
}

/// `10.0.0.50-10.0.0.250, 10.0.1.0/28, 10.0.2.7` as merged ranges.
fn parse_list(list: &str) -> Result<Vec<(u32, u32)>, PoolError> {
    let mut ranges = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_item)
        .collect::<Result<Vec<_>, _>>()?;
    ranges.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ok(merged)
}

impl Pool {
    /// The pool `include` less `exclude`, both in the `GATEWAY_IP_POOL`
    /// syntax.
    pub fn parse(include: &str, exclude: &str) -> Result<Self, PoolError> {
        let include_ranges = parse_list(include)?;
        let exclude = parse_list(exclude)?;
        let mut ranges = Vec::new();
        for (a, b) in include_ranges {
            let (mut a, b) = (u64::from(a), u64::from(b));
            for &(xa, xb) in &exclude {
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
        let size: u64 = ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        if size == 0 {
            return Err(PoolError::Empty);
        }
        if size > MAX_POOL {
            return Err(PoolError::TooLarge(size));
        }
        Ok(Self {
            ranges,
            spec: include
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            size,
        })
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
        assert_eq!(pool.size(), 9);
        assert_eq!(ips(&pool)[..2], ["10.0.0.5", "10.0.0.6"]);
        assert!(pool.contains("10.0.1.3".parse().unwrap()));
        assert!(!pool.contains("10.0.1.4".parse().unwrap()));
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
            Err(PoolError::TooLarge(131_072))
        );
        assert_eq!(Pool::parse("10.0.0.0/16", "").unwrap().size(), 65_536);
    }
}
