//! The identity of a client certificate, read from DER the client chose:
//! never panics, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gatemesh_runtime::identity::certificate_name(data);
});
