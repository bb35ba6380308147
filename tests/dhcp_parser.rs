//! The lease parser on arbitrary and near-valid bytes (issue 11): it never
//! panics, never rejects a file for one line, and every line is accounted
//! for. `fuzz/fuzz_targets/lease_file.rs` checks the same with libFuzzer.

use gatemesh_dnsmasq::leases::{self, MAX_EXPIRY, MAX_WARNINGS};
use proptest::prelude::*;

const NOW: u64 = 1_732_240_000;

/// Every line is a lease, an expired lease, a DUID, blank, or a warning;
/// warnings are capped; no lease outlives year 9999.
fn check(bytes: &[u8]) -> leases::LeaseFile {
    let file = leases::parse_bytes(bytes, NOW);
    let lines = bytes.split(|b| *b == b'\n').count();
    assert!(file.leases.len() + file.expired + file.malformed <= lines);
    assert!(file.warnings.len() <= MAX_WARNINGS.min(file.malformed));
    for lease in &file.leases {
        assert!(lease.expires.is_none_or(|t| t > NOW && t <= MAX_EXPIRY));
        assert!(lease.hostname.as_ref().is_none_or(|h| h.len() <= 253));
    }
    for warning in &file.warnings {
        assert!(warning.line >= 1 && warning.line <= lines);
        assert!(warning.message.len() < 256, "{warning}");
    }
    file
}

/// A field that is sometimes right and often not.
fn field(valid: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::sample::select(valid).prop_map(|s| s.as_bytes().to_vec()),
        1 => proptest::collection::vec(any::<u8>(), 0..12),
        1 => Just(b"18446744073709551615".to_vec()),
        1 => Just(vec![0xff, 0xfe]),
    ]
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    (
        field(&["0", "1732243600", "253402300799", "253402300800", "-1"]),
        field(&["52:54:00:12:34:56", "20-00:11", "00-", "1234567", "T42"]),
        field(&["10.0.0.5", "fd00::5", "10.0.0.300"]),
        field(&["*", "vps-42", "localhost", "caf\u{e9}"]),
        field(&["*", "01:52:54:00:12:34:56", "00:03:00:01:52:54:00:12:34:56"]),
    )
        .prop_map(|(a, b, c, d, e)| [a, b, c, d, e].join(&b' '))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check(&bytes);
    }

    #[test]
    fn one_bad_line_costs_only_itself(
        lines in proptest::collection::vec(line(), 0..40),
        at in any::<prop::sample::Index>(),
    ) {
        let good = b"0 52:54:00:aa:bb:cc 10.9.9.9 vps-kept *".to_vec();
        let mut all = lines;
        let at = at.index(all.len() + 1);
        all.insert(at, good);
        let bytes = all.join(&b'\n');
        let file = check(&bytes);
        prop_assert!(
            file.leases.iter().any(|l| l.hostname.as_deref() == Some("vps-kept")),
            "the good line was lost among bad ones"
        );
    }
}
