//! Errors from building an image and from programming the kernel. Each
//! says which map, workload, prefix, hook or path it is about.

use std::{io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
    EbpfError,
};
use egress_common::Hook;
use ipnet::IpNet;

use crate::sys::SysError;
use egress_policy::model::ObjectId;

/// Why a plan cannot be turned into map contents.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The programs check at most `MAX_PORT_ENTRIES * MAX_PORT_CHAIN`
    /// (128) entries per prefix, after entries that can never decide are
    /// dropped and neighbouring ranges of one rule merged.
    #[error("workload {workload}: {table} allows {entries} (protocol, port) entries for {prefix}; at most 128 fit (merge ports into ranges, or split the rules across prefixes)")]
    PortSetTooLarge {
        workload: ObjectId,
        table: &'static str,
        prefix: IpNet,
        entries: usize,
    },
    /// `CaptureInfo` holds at most `MAX_CAPTURE_PORTS` (16) distinct ports
    /// per list.
    #[error("workload {workload}: Redirect {field} lists {len} distinct ports; at most 16 fit")]
    TooManyCapturePorts {
        workload: ObjectId,
        field: &'static str,
        len: usize,
    },
    #[error("workloads {first} and {second} have the same cgroup (id {cgroup_id})")]
    SharedCgroup {
        first: ObjectId,
        second: ObjectId,
        cgroup_id: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{path} is not a cgroup v2 directory")]
    NotCgroup2 { path: PathBuf },
    #[error("inspecting {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: SysError,
    },
    #[error("cgroup root {path} is not below the cgroup2 mount {mount}")]
    RootOutsideMount { path: PathBuf, mount: PathBuf },
    #[error("{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)")]
    NotBpffs { path: PathBuf },
    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A map pinned by another version of the agent has another layout; it
    /// cannot be adopted. `uninstall` first (enforcement lapses until the
    /// new agent attaches).
    #[error("pinned map {path} has {found}, this agent needs {expected}: it was created by an incompatible agent version; run `egress-agent uninstall` first")]
    IncompatibleMap {
        path: PathBuf,
        found: String,
        expected: String,
    },
    /// A pinned map keeps the size it was created with; see
    /// `dataplane::capacities`.
    #[error("pinned map {path} holds at most {pinned} entries, but {flag} asks for {asked}: a pinned map cannot be resized; run with {flag} {pinned}, or run `egress-agent uninstall` first (enforcement lapses until the agent attaches again) so that the maps are created with the new size")]
    CapacityMismatch {
        path: PathBuf,
        flag: &'static str,
        pinned: u32,
        asked: u32,
    },
    #[error("{flag} 0: a map needs room for at least one entry")]
    ZeroCapacity { flag: &'static str },
    #[error("reading pinned map {path}")]
    PinnedMap {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// `memlock` is set when raising `RLIMIT_MEMLOCK` failed first:
    /// harmless on kernels >= 5.11, the likely cause on older ones.
    #[error("loading the embedded eBPF object{}", memlock_hint(.memlock))]
    LoadObject {
        #[source]
        source: EbpfError,
        memlock: Option<io::Error>,
    },
    #[error("the eBPF object has no program `{0}` (agent and eBPF built from different sources?)")]
    MissingProgram(&'static str),
    #[error("cannot read the programs' aya-log records")]
    EbpfLog {
        #[source]
        source: aya_log::Error,
    },
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
    #[error("attaching {hook:?} to cgroup {path}")]
    Attach {
        hook: Hook,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("taking the link of {hook:?} from aya")]
    TakeLink {
        hook: Hook,
        #[source]
        source: ProgramError,
    },
    #[error("the link of {hook:?} is not a bpf_link (kernel older than 5.7?)")]
    NotFdLink {
        hook: Hook,
        #[source]
        source: LinkError,
    },
    #[error("pinning the link of {hook:?} at {path}")]
    PinLink {
        hook: Hook,
        path: PathBuf,
        #[source]
        source: PinError,
    },
    #[error("workload {workload}: cgroup {cgroup:?} is at level {level} of the cgroup hierarchy; the programs look at levels 0 to 31 only")]
    WorkloadTooDeep {
        workload: ObjectId,
        cgroup: String,
        level: u32,
    },
    /// The programs only run below the cgroup root they are attached to.
    #[error("workload {workload}: cgroup {cgroup:?} is not below the enforced cgroup root {root:?}, so it would not be enforced")]
    OutsideRoot {
        workload: ObjectId,
        cgroup: String,
        root: String,
    },
    #[error("writing {what} to `{map}`")]
    Write {
        map: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    /// The policy does not fit; the generation in force stays.
    #[error("map `{map}` is full: it holds {capacity} prefixes, summed over the distinct policies of the generation in force and of the one being written; the policy in force is kept; raise {flag} (it sizes the map when the agent first loads it, see docs/operations.md)")]
    MapFull {
        map: &'static str,
        capacity: u32,
        flag: &'static str,
    },
    #[error("deleting {what} from `{map}`")]
    Delete {
        map: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("reading map `{map}`")]
    Read {
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
