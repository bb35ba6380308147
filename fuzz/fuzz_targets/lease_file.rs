//! dnsmasq's lease file, as a hostile node could leave it: the parser never
//! panics, and every non-empty line is a lease, an expired lease, the
//! server's DUID, or a counted warning.

#![no_main]

use gatemesh_dnsmasq::leases;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let file = leases::parse_bytes(data, 1_732_240_000);
    assert!(file.warnings.len() <= leases::MAX_WARNINGS);
    assert!(file.warnings.len() <= file.malformed);
    let lines = data.split(|b| *b == b'\n').count();
    assert!(file.leases.len() + file.expired + file.malformed <= lines);
    for lease in &file.leases {
        assert!(lease.expires.is_none_or(|t| t <= leases::MAX_EXPIRY));
    }
});
