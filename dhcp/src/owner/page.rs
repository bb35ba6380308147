//! `GetLeases` pages: a bounded slice of the lease table after a token,
//! and the tokens themselves (the last key of a page, as text).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::ops::Bound;

use gatemesh_dnsmasq::leases::Hardware;
use gatemesh_dnsmasq::names::short;
use gatemesh_proto::pb;
use prost::Message as _;

use super::lease::{Entry, Key, State};
use crate::handle::{DEFAULT_PAGE, MAX_PAGE, MAX_PAGE_BYTES, PageError};

/// One page of leases, sorted by IP, and the token of the next page
/// (empty when this is the last).
pub(crate) fn page(
    entries: &BTreeMap<Key, Entry>,
    request: &pb::GetLeasesRequest,
) -> Result<(Vec<pb::DhcpLease>, String), PageError> {
    let after = match request.page_token.as_str() {
        "" => None,
        token => Some(decode_token(token).ok_or_else(|| PageError::BadToken(short(token, 64)))?),
    };
    let size = match request.page_size as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let range = match &after {
        Some(key) => entries.range((Bound::Excluded(key), Bound::Unbounded)),
        None => entries.range(..),
    };
    let mut leases = Vec::new();
    let mut bytes = 0;
    let mut last = None;
    let mut more = false;
    for (key, e) in range {
        if leases.len() == size || bytes >= MAX_PAGE_BYTES {
            more = true;
            break;
        }
        let lease = lease(key, e);
        bytes += lease.encoded_len() + 4;
        leases.push(lease);
        last = Some(key);
    }
    let next_page_token = match (more, last) {
        (true, Some(key)) => encode_token(key),
        _ => String::new(),
    };
    Ok((leases, next_page_token))
}

fn lease(key: &Key, e: &Entry) -> pb::DhcpLease {
    let (vps_id, state) = match &e.state {
        State::Named(id) => (id.clone(), "hostname"),
        State::Resolved(id) => (id.clone(), "resolved"),
        State::Resolving => (String::new(), "resolving"),
        State::Waiting { .. } => (String::new(), "pending"),
    };
    pb::DhcpLease {
        ip: key.0.to_string(),
        mac: e.lease.mac().unwrap_or_default(),
        hostname: e.lease.hostname.clone().unwrap_or_default(),
        expires: e.lease.expires.unwrap_or(0),
        vps_id,
        state: state.into(),
        last_error: e
            .error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

/// A page token: the last key of the page, as `<ip> <hardware>`.
fn encode_token((ip, hardware): &Key) -> String {
    match hardware {
        Hardware::Mac(mac) => format!("{ip} mac {mac}"),
        Hardware::Other(other) => format!("{ip} other {other}"),
        Hardware::Iaid { iaid, temporary } => {
            format!("{ip} iaid {}{iaid}", if *temporary { "T" } else { "" })
        }
    }
}

fn decode_token(token: &str) -> Option<Key> {
    let mut parts = token.splitn(3, ' ');
    let ip: IpAddr = parts.next()?.parse().ok()?;
    let hardware = match (parts.next()?, parts.next()?) {
        ("mac", mac) => Hardware::Mac(mac.into()),
        ("other", other) => Hardware::Other(other.into()),
        ("iaid", iaid) => match iaid.strip_prefix('T') {
            Some(n) => Hardware::Iaid {
                iaid: n.parse().ok()?,
                temporary: true,
            },
            None => Hardware::Iaid {
                iaid: iaid.parse().ok()?,
                temporary: false,
            },
        },
        _ => return None,
    };
    Some((ip, hardware))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip() {
        let keys: [Key; 4] = [
            (
                "10.0.0.1".parse().unwrap(),
                Hardware::Mac("52:54:00:00:00:01".into()),
            ),
            (
                "10.0.0.2".parse().unwrap(),
                Hardware::Other("20-00:11".into()),
            ),
            (
                "fd00::1".parse().unwrap(),
                Hardware::Iaid {
                    iaid: 7,
                    temporary: true,
                },
            ),
            (
                "fd00::2".parse().unwrap(),
                Hardware::Iaid {
                    iaid: 8,
                    temporary: false,
                },
            ),
        ];
        for key in keys {
            assert_eq!(decode_token(&encode_token(&key)), Some(key));
        }
        for bad in ["", "x", "10.0.0.1", "10.0.0.1 iaid x", "10.0.0.1 what 1"] {
            assert_eq!(decode_token(bad), None, "{bad}");
        }
    }
}
