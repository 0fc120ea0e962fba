//! Rebuild the eBPF object when bpf-linker changes.
//!
//! bpf-linker is the linker of the `bpfel-unknown-none` target, but cargo
//! does not track linkers. A new bpf-linker (or a new LLVM under it) can
//! change the object, so its path is declared as a build input. The host
//! build of this crate (clippy, `cargo test --workspace`) does not link with
//! bpf-linker and must not require it.

use std::env;

fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_ARCH");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => {
            println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`")
        }
    }
}
