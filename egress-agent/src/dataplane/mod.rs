//! Programs the kernel: eBPF programs and maps.
