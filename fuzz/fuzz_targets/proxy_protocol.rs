//! The gateway's PROXY protocol v2 reader
//! (`egress_proxy::proxy_protocol::parse`, over the `ppp` crate) on
//! arbitrary bytes, followed, as in the gateway, by the sniffer on the
//! bytes after the header. Any panic is a bug.
//!
//! Properties checked on every header found:
//!
//! - its length is within the input and at least the 16-byte fixed part,
//!   and the header alone parses to the same answer (what follows it is
//!   the client's, never part of the header);
//! - the addresses round-trip: encoding them as the sidecar does and
//!   parsing that gives them back.
//!
//! There is no PROXY v1 (text) reader in the project: the sidecar only
//! writes v2, and a v1 line reaches the sniffer as a malformed HTTP head.

#![no_main]

use egress_proxy::{
    proxy_protocol::{encode, parse, Parsed, Received, SIGNATURE},
    sniff::sniff,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = match parse(data) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    match parsed {
        Parsed::Absent => {
            assert!(!data.starts_with(&SIGNATURE[..data.len().min(SIGNATURE.len())]));
            let _ = sniff(data);
        }
        Parsed::NeedMore => {}
        Parsed::Present { header, len } => {
            assert!(
                (16..=data.len()).contains(&len),
                "header length {len} outside 16..={}",
                data.len()
            );
            assert_eq!(
                parse(&data[..len]).expect("the header alone parses"),
                Parsed::Present { header, len },
                "the header alone parses differently"
            );
            if let Received::Proxied {
                source,
                destination,
            } = header
            {
                let bytes = encode(source, destination).expect("a received pair encodes");
                match parse(&bytes).expect("an encoded header parses") {
                    Parsed::Present { header: again, .. } => {
                        assert_eq!(again, header, "the addresses do not round-trip")
                    }
                    other => panic!("an encoded header parses as {other:?}"),
                }
            }
            let _ = sniff(&data[len..]);
        }
    }
});
