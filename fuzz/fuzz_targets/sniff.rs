//! The gateway's sniffer (`egress_proxy::sniff::sniff`): TLS SNI through
//! tls-parser, HTTP `Host` through httparse, on whatever a client sends
//! first. Any panic is a bug: these are the bytes of an untrusted peer.
//!
//! Besides "no panic", two properties:
//!
//! - a host the sniffer returns is a valid [`Host`] that parses back to
//!   itself, and unless it is an IP literal (which is canonicalised) it is
//!   in the input (lower-cased): nothing is made up;
//! - the answer does not depend on how the bytes were split into reads:
//!   the gateway sniffs after every read and stops at the first decided
//!   answer, so an answer decided on a prefix must be the whole input's.

#![no_main]

use egress_proxy::sniff::{sniff, Host, Sniff, SniffError, Sniffed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = sniff(data);
    if let Ok(Sniff::Done(sniffed)) = &whole {
        check_host(sniffed, data);
    }
    if let Err(e) = &whole {
        let _ = e.to_string();
    }
    // A cut that depends on the input, so the fuzzer can steer it.
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let prefix = sniff(&data[..cut]);
    let decided = match &prefix {
        Ok(Sniff::Done(_)) => true,
        // `TooLong` is a decision about the buffer's size, not its bytes.
        Err(SniffError::TooLong) | Ok(Sniff::NeedMore) => false,
        Err(_) => true,
    };
    if decided {
        assert_eq!(
            prefix, whole,
            "the answer on the first {cut} bytes differs from the whole input's"
        );
    }
});

fn check_host(sniffed: &Sniffed, data: &[u8]) {
    let _ = sniffed.protocol();
    let Some(host) = sniffed.host() else {
        return;
    };
    let again: Host = host.as_str().parse().expect("a sniffed host parses again");
    assert_eq!(&again, host, "a sniffed host is canonical");
    if host.ip().is_none() {
        let name = host.as_str().as_bytes();
        let lower = data.to_ascii_lowercase();
        assert!(
            lower.windows(name.len()).any(|w| w == name),
            "the host {host} is not in the input"
        );
    }
}
