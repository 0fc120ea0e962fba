//! Errors from programming the kernel.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError, EbpfError};
use ipnet::IpNet;

use super::Hook;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object could not be loaded. `memlock` is set when raising
    /// `RLIMIT_MEMLOCK` failed first: harmless on kernels >= 5.11, the likely
    /// cause on older ones.
    #[error("loading the embedded eBPF object{}", memlock_hint(.memlock))]
    LoadObject {
        #[source]
        source: EbpfError,
        memlock: Option<io::Error>,
    },
    #[error("the eBPF object has no program `{0}` (agent and eBPF built from different sources?)")]
    MissingProgram(&'static str),
    #[error("program `{program}` is not of the expected type")]
    ProgramType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The verifier's log is part of `source`'s message.
    #[error("loading program `{program}` into the kernel")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the eBPF object has no map `{0}` (agent and eBPF built from different sources?)")]
    MissingMap(&'static str),
    #[error("map `{map}` does not have the expected type or key/value sizes")]
    MapLayout {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("inspecting cgroup {path}")]
    InspectCgroup {
        path: PathBuf,
        #[source]
        source: crate::sys::SysError,
    },
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {hook} to cgroup {path}")]
    Attach {
        hook: Hook,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("{hook} is already attached to cgroup {path}")]
    AlreadyAttached { hook: Hook, path: PathBuf },
    #[error("{hook} is not attached to cgroup {path}")]
    NotAttached { hook: Hook, path: PathBuf },
    #[error("detaching {hook} from cgroup {path}")]
    Detach {
        hook: Hook,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("inserting deny prefix {prefix} into `{map}`")]
    InsertPrefix {
        prefix: IpNet,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("removing deny prefix {prefix} from `{map}`")]
    RemovePrefix {
        prefix: IpNet,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("reading map `{map}`")]
    ReadMap {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

fn memlock_hint(memlock: &Option<io::Error>) -> String {
    match memlock {
        Some(err) => format!(" (raising RLIMIT_MEMLOCK had failed: {err})"),
        None => String::new(),
    }
}
