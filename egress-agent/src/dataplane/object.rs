//! The eBPF object, embedded at build time.

/// The ELF object that `build.rs` built from `egress-ebpf`.
///
/// Embedding it (rather than reading a file at run time) guarantees that the
/// map layouts match the `egress-common` types this binary was built with.
pub fn bytes() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"))
}
