//! `aya::Pod` for every type that crosses the kernel/user boundary, so the
//! agent can read and write them in maps (the `user` feature).

// SAFETY: each type is `#[repr(C)]`, made only of integers and byte arrays
// with explicit padding fields and no implicit padding (checked by the
// `types_have_no_padding` test beside each type), so every bit pattern is
// valid.
unsafe impl aya::Pod for crate::Config {}
unsafe impl aya::Pod for crate::WorkloadSlot {}
unsafe impl aya::Pod for crate::PolicyInfo {}
unsafe impl aya::Pod for crate::PolicyAddrV4 {}
unsafe impl aya::Pod for crate::PolicyAddrV6 {}
unsafe impl aya::Pod for crate::PortEntry {}
unsafe impl aya::Pod for crate::PortSet {}
unsafe impl aya::Pod for crate::HitKey {}
unsafe impl aya::Pod for crate::UdpFlowKey {}
unsafe impl aya::Pod for crate::CaptureInfo {}
unsafe impl aya::Pod for crate::OrigDst {}
unsafe impl aya::Pod for crate::SockKey {}
unsafe impl aya::Pod for crate::DnsOrig {}
unsafe impl aya::Pod for crate::EventConfig {}
unsafe impl aya::Pod for crate::Event {}
unsafe impl aya::Pod for crate::LimitKey {}
unsafe impl aya::Pod for crate::SourceKey {}
