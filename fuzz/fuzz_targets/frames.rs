//! Any bytes a peer sends, decoded as either end's frame: decoding never
//! panics, and what decodes re-encodes to something that decodes the same.

#![no_main]

use gatemesh_proto::pb;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = pb::InstanceMessage::decode(data) {
        let again = pb::InstanceMessage::decode(frame.encode_to_vec().as_slice()).unwrap();
        assert_eq!(frame, again);
    }
    if let Ok(frame) = pb::GatewayMessage::decode(data) {
        let again = pb::GatewayMessage::decode(frame.encode_to_vec().as_slice()).unwrap();
        assert_eq!(frame, again);
    }
});
