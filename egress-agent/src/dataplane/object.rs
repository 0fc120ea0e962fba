//! The eBPF object, embedded at build time.

use std::sync::OnceLock;

/// The ELF object that `build.rs` built from `egress-ebpf`.
///
/// Embedding it (rather than reading a file at run time) guarantees that the
/// map layouts match the `egress-common` types this binary was built with.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"))
}

/// A short fingerprint of [`bytes`] (FNV-1a, 64 bits, in hex). Link pins
/// carry it, so that an agent recognises links to its own programs (and
/// adopts them) and replaces links to another build's.
pub fn fingerprint() -> &'static str {
    static FINGERPRINT: OnceLock<String> = OnceLock::new();
    FINGERPRINT.get_or_init(|| {
        let hash = bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    })
}
