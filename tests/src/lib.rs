//! Fixtures for privileged tests: network namespaces, cgroups, listeners,
//! bpffs pin directories, and enforced scenarios ([`Enforced`]).
//!
//! Every fixture creates what it needs under a name unique to this process
//! and test ([`names`]), and removes it in `Drop`, which also runs when a
//! test panics. Leftovers of a process that was killed outright are swept
//! the next time a fixture is created.
//!
//! Test traffic never leaves the namespaces the fixtures create: the root
//! namespace's interfaces and routes are never touched.

pub mod agent;
pub mod apiserver;
pub mod bpftool;
pub mod cgroup;
pub mod enforcer;
pub mod internet;
pub mod loadgen;
pub mod mesh;
pub mod names;
pub mod netns;
pub mod nftns;
pub mod nftshim;
pub mod node;
pub mod packet;
pub mod pins;
pub mod policies;
pub mod probe;
pub mod rotating_dns;
pub mod scenario;

pub use cgroup::TestCgroup;
pub use enforcer::{Enforced, Resolved};
pub use netns::{Netns, TestNet};
pub use pins::PinDir;
pub use probe::{
    Client, Event, Held, Listener, Outcome, Proto, RepeatOp, Repeater, Tally, Tunnelled,
};

/// How long a silence check waits for what must not happen (a datagram that
/// must not arrive, a log line the agent must not write). A bound, not a
/// timing check: a regression turns into an arrival within it, long against
/// a small reload and the agent's event readers.
pub const SILENCE: std::time::Duration = std::time::Duration::from_millis(700);

/// Fails early, and says why, when the tests cannot work at all.
pub fn require_root() {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        uid, 0,
        "the integration tests need root (netns, cgroups, eBPF); run them through `cargo xtask test`"
    );
}

/// A binary of this workspace, found beside the running test: test
/// executables live in `target/<profile>/deps/`, binaries one level up.
/// The environment variable `env` overrides the lookup; `hint` says how to
/// build the binary when it is missing.
pub fn target_bin(name: &str, env: &str, hint: &str) -> std::path::PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(bin.exists(), "{} not found: {hint}", bin.display());
    bin
}
