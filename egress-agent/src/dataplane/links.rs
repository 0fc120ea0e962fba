//! Attaching the programs once, at the cgroup root, through pinned
//! bpf_links; adopting the links an earlier agent process left.
//!
//! A link is pinned at `<pin_dir>/links/<program>@<fingerprint>`, the
//! fingerprint being that of the embedded object ([`object::fingerprint`]).
//! An agent adopts a pinned link only if it is its own build's, attached to
//! its cgroup root, and running a program that uses its pinned maps;
//! adopting never detaches anything, so a restart leaves no gap. Anything
//! else is replaced: the new link is attached first, the old one unpinned
//! after, so both run (and agree, reading the same maps) for a moment
//! rather than neither.
//!
//! Eleven programs: six decide (`cgroup_skb/egress`, `connect4/6`,
//! `sendmsg4/6`, and `lsm_cgroup/socket_create`, which refuses packet
//! sockets), two record the flows whose replies they allow
//! (`sockops`, `cgroup_skb/ingress`), `cgroup/getsockopt` answers
//! `SO_ORIGINAL_DST` for redirected connections, and `recvmsg4/6` restore
//! the source of redirected DNS replies. All are attached the same way and
//! named the same way (`<program>@<fingerprint>`), so adoption, replacement
//! and uninstall treat them alike.
//!
//! bpf_links to a cgroup are always multi-attach (`bpf_link_create` even
//! rejects an explicit `BPF_F_ALLOW_MULTI`, hence aya's default mode here):
//! programs that others attach to the same cgroup or its ancestors keep
//! running, and a packet must pass all of them.

use std::{
    fs::{self, File},
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
        CgroupSockopt, LsmCgroup, SockOps,
    },
    Btf, Ebpf,
};
use egress_common::{program, Hook};

use super::{cgroups::CgroupRoot, object, syscalls, DataplaneError};

/// One program attached at the cgroup root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedLink {
    pub hook: Hook,
    /// Where the link is pinned.
    pub pin: PathBuf,
    /// The kernel's ids, as `bpftool link` / `bpftool prog` show them.
    pub link_id: u32,
    pub program_id: u32,
    /// Whether this process found the link pinned and kept it, rather
    /// than attaching it.
    pub adopted: bool,
}

/// The program that runs at `hook`.
pub fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Skb => program::EGRESS_SKB,
        Hook::Connect4 => program::CONNECT4,
        Hook::Connect6 => program::CONNECT6,
        Hook::Sendmsg4 => program::SENDMSG4,
        Hook::Sendmsg6 => program::SENDMSG6,
        Hook::SockCreate => program::SOCK_CREATE,
        Hook::SetSockopt => program::SETSOCKOPT,
        Hook::SockOps => program::SOCK_OPS,
        Hook::SkbIngress => program::SKB_INGRESS,
        Hook::GetSockopt => program::GETSOCKOPT,
        Hook::Recvmsg4 => program::RECVMSG4,
        Hook::Recvmsg6 => program::RECVMSG6,
    }
}

/// The hooks in attach order. The recorders first: a connection accepted
/// or a datagram received between two attaches is then already known when
/// the deciding programs start asking (a flow that arrived before the
/// recorders ran is never known, and its replies are decided by the
/// policy). `getsockopt` and `recvmsg4/6` before the hooks that redirect,
/// so that a proxy never accepts a redirected connection it cannot ask
/// about, and no redirected DNS reply keeps the proxy's source. Then
/// the packet-level guarantee, so that no moment has only the
/// connect hooks; packet sockets are refused from then on.
const ATTACH_ORDER: [Hook; 12] = [
    Hook::SockOps,
    Hook::SkbIngress,
    Hook::GetSockopt,
    Hook::Recvmsg4,
    Hook::Recvmsg6,
    Hook::Skb,
    Hook::Connect4,
    Hook::Connect6,
    Hook::Sendmsg4,
    Hook::Sendmsg6,
    Hook::SockCreate,
    Hook::SetSockopt,
];

/// `<program>@<fingerprint>`.
fn pin_name(hook: Hook, fingerprint: &str) -> String {
    format!("{}@{fingerprint}", program_name(hook))
}

/// The hook and fingerprint of a pin name this agent (any version) made.
pub(super) fn parse_pin_name(name: &str) -> Option<(Hook, &str)> {
    let (prog, fingerprint) = name.split_once('@')?;
    let hook = ATTACH_ORDER
        .into_iter()
        .find(|h| program_name(*h) == prog)?;
    (fingerprint.len() == 16 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some((hook, fingerprint))
}

/// Links pinned in `links_dir` by some version of the agent.
pub(super) fn pinned(links_dir: &Path) -> Result<Vec<(Hook, String, PathBuf)>, DataplaneError> {
    let entries = match fs::read_dir(links_dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io("listing", links_dir, source)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| io("listing", links_dir, source))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((hook, fingerprint)) = parse_pin_name(&name) {
            found.push((hook, fingerprint.to_owned(), entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Ids of pinned maps that tell our programs from others': a program that
/// uses one of them runs on this pin directory's maps.
#[derive(Clone, Copy, Debug)]
pub(super) struct OwnMaps {
    /// `WORKLOADS`: used by every program but `sockops`.
    pub(super) workloads: u32,
    /// `INBOUND_TCP`: the only map `sockops` decides with.
    pub(super) inbound_tcp: u32,
    /// `ORIG_DST`: the only map `getsockopt` reads.
    pub(super) orig_dst: u32,
    /// `DNS_ORIG`: the only map `recvmsg4/6` read.
    pub(super) dns_orig: u32,
}

impl OwnMaps {
    /// The map `hook`'s program must use to be adopted.
    fn of(&self, hook: Hook) -> u32 {
        match hook {
            Hook::SockOps => self.inbound_tcp,
            Hook::GetSockopt => self.orig_dst,
            Hook::Recvmsg4 | Hook::Recvmsg6 => self.dns_orig,
            _ => self.workloads,
        }
    }
}

/// Makes sure every program runs at `root`, adopting what can be adopted.
/// Returns the links, and the pins of replaced links.
pub(super) fn establish(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    root: &CgroupRoot,
    own: OwnMaps,
) -> Result<(Vec<AttachedLink>, Vec<PathBuf>), DataplaneError> {
    let fingerprint = object::fingerprint();
    let before = pinned(links_dir)?;
    let mut links = Vec::with_capacity(ATTACH_ORDER.len());
    let mut replaced = Vec::new();
    for hook in ATTACH_ORDER {
        let pin = links_dir.join(pin_name(hook, fingerprint));
        if let Some(link) = adopt(hook, &pin, root, own.of(hook))? {
            links.push(link);
            continue;
        }
        let link = match attach(ebpf, hook, root, links_dir) {
            Ok(link) => link,
            // BPF LSM programs need a kernel with the bpf LSM active and
            // BPF trampolines (tracing program types); some kernels and
            // sandboxes have cgroup BPF without them. Every other
            // guarantee still holds, so the agent runs without this one,
            // and says so: packet sockets are then NOT refused
            // (docs/security.md, "Known limits").
            Err(err @ DataplaneError::LoadProgram { .. }) if hook == Hook::SockCreate => {
                tracing::warn!(
                    error = %err,
                    "lsm_cgroup/socket_create cannot be loaded on this kernel: \
                     AF_PACKET sockets are NOT refused"
                );
                continue;
            }
            Err(err) => return Err(err),
        };
        // A link pinned here that could not be adopted (attached to another
        // root, or to other maps) goes now that the new one runs.
        match fs::remove_file(&pin) {
            Ok(()) => replaced.push(pin.clone()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(io("unpinning", &pin, source)),
        }
        link.pin(&pin).map_err(|source| DataplaneError::PinLink {
            hook,
            path: pin.clone(),
            source,
        })?;
        let info = inspect(&pin)?;
        links.push(AttachedLink {
            hook,
            pin,
            link_id: info.id,
            program_id: info.prog_id,
            adopted: false,
        });
    }
    // Links of other builds: ours run now, so theirs can go.
    for (_, other, path) in before {
        if other != fingerprint {
            fs::remove_file(&path).map_err(|source| io("unpinning", &path, source))?;
            replaced.push(path);
        }
    }
    Ok((links, replaced))
}

/// The pinned link at `pin`, if it can be kept as is: attached to `root`
/// and running a program that uses the map `own_map_id`.
fn adopt(
    hook: Hook,
    pin: &Path,
    root: &CgroupRoot,
    own_map_id: u32,
) -> Result<Option<AttachedLink>, DataplaneError> {
    if !pin.exists() {
        return Ok(None);
    }
    let info = inspect(pin)?;
    if info.cgroup_id != Some(root.id) {
        return Ok(None);
    }
    let uses_our_maps = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == info.prog_id)
        .and_then(|p| p.map_ids().ok().flatten())
        .is_some_and(|ids| ids.contains(&own_map_id));
    if !uses_our_maps {
        return Ok(None);
    }
    Ok(Some(AttachedLink {
        hook,
        pin: pin.to_owned(),
        link_id: info.id,
        program_id: info.prog_id,
        adopted: true,
    }))
}

fn inspect(pin: &Path) -> Result<syscalls::LinkInfo, DataplaneError> {
    let fd = syscalls::obj_get(pin).map_err(|source| io("opening pinned link", pin, source))?;
    syscalls::link_info(&fd).map_err(|source| io("inspecting pinned link", pin, source))
}

/// Loads `hook`'s program and attaches it to `root` with a new bpf_link.
fn attach(
    ebpf: &mut Ebpf,
    hook: Hook,
    root: &CgroupRoot,
    links_dir: &Path,
) -> Result<FdLink, DataplaneError> {
    let name = program_name(hook);
    let dir = File::open(&root.path).map_err(|source| io("opening cgroup", &root.path, source))?;
    let attach_err = |source| DataplaneError::Attach {
        hook,
        path: root.path.clone(),
        source,
    };
    let take_err = |source| DataplaneError::TakeLink { hook, source };
    let fd_err = |source| DataplaneError::NotFdLink { hook, source };
    let mode = CgroupAttachMode::default();
    match hook {
        Hook::Skb | Hook::SkbIngress => {
            let direction = if hook == Hook::Skb {
                CgroupSkbAttachType::Egress
            } else {
                CgroupSkbAttachType::Ingress
            };
            let prog: &mut CgroupSkb = program_mut(ebpf, name)?;
            load(|| prog.load(), name)?;
            let id = prog.attach(&dir, direction, mode).map_err(attach_err)?;
            FdLink::try_from(prog.take_link(id).map_err(take_err)?).map_err(fd_err)
        }
        Hook::SockCreate => {
            // The LSM hook is named by its BTF id: the kernel's own BTF.
            let btf = Btf::from_sys_fs().map_err(|source| DataplaneError::Io {
                action: "reading kernel BTF for lsm_cgroup/socket_create from",
                path: "/sys/kernel/btf/vmlinux".into(),
                source: std::io::Error::other(source),
            })?;
            let prog: &mut LsmCgroup = program_mut(ebpf, name)?;
            load(|| prog.load("socket_create", &btf), name)?;
            let id = prog.attach(&dir).map_err(attach_err)?;
            // An LSM link is an fd link already: the conversion cannot fail.
            Ok(prog.take_link(id).map_err(take_err)?.into())
        }
        Hook::SockOps => {
            let prog: &mut SockOps = program_mut(ebpf, name)?;
            load(|| prog.load(), name)?;
            let id = prog.attach(&dir, mode).map_err(attach_err)?;
            FdLink::try_from(prog.take_link(id).map_err(take_err)?).map_err(fd_err)
        }
        Hook::GetSockopt | Hook::SetSockopt => {
            let prog: &mut CgroupSockopt = program_mut(ebpf, name)?;
            load(|| prog.load(), name)?;
            let prog_fd = prog.fd().map_err(|source| DataplaneError::LoadProgram {
                program: name,
                source,
            })?;
            sockopt_link(hook, prog_fd.as_fd(), &dir, &root.path, links_dir)
        }
        Hook::Connect4
        | Hook::Connect6
        | Hook::Sendmsg4
        | Hook::Sendmsg6
        | Hook::Recvmsg4
        | Hook::Recvmsg6 => {
            // The attach type comes from the program's ELF section.
            let prog: &mut CgroupSockAddr = program_mut(ebpf, name)?;
            load(|| prog.load(), name)?;
            let id = prog.attach(&dir, mode).map_err(attach_err)?;
            FdLink::try_from(prog.take_link(id).map_err(take_err)?).map_err(fd_err)
        }
    }
}

/// A `cgroup/getsockopt` or `cgroup/setsockopt` bpf_link as an `FdLink`. aya 0.14 keeps this
/// link type to itself, so it is created with `BPF_LINK_CREATE`, pinned
/// at a temporary name in `links_dir` (bpffs refuses names with a dot;
/// no `@`, so never taken for
/// one of ours), and taken back with `PinnedLink::unpin`, which removes
/// that name.
fn sockopt_link(
    hook: Hook,
    prog: BorrowedFd<'_>,
    cgroup: &File,
    path: &Path,
    links_dir: &Path,
) -> Result<FdLink, DataplaneError> {
    let (attach_type, tmp) = if hook == Hook::SetSockopt {
        (
            syscalls::BPF_CGROUP_SETSOCKOPT,
            "setsockopt-link-being-pinned",
        )
    } else {
        (
            syscalls::BPF_CGROUP_GETSOCKOPT,
            "getsockopt-link-being-pinned",
        )
    };
    let fd = syscalls::cgroup_link_create(prog, cgroup.as_fd(), attach_type)
        .map_err(|source| io("attaching cgroup/{get,set}sockopt at", path, source))?;
    let tmp = links_dir.join(tmp);
    let _ = fs::remove_file(&tmp);
    syscalls::obj_pin(fd.as_fd(), &tmp)
        .map_err(|source| io("pinning the cgroup/getsockopt link at", &tmp, source))?;
    let pinned =
        PinnedLink::from_pin(&tmp).map_err(|source| DataplaneError::NotFdLink { hook, source });
    let link = pinned.and_then(|p| {
        p.unpin()
            .map_err(|source| io("unpinning the temporary link", &tmp, source))
    });
    let _ = fs::remove_file(&tmp);
    link
}

/// How many times a load interrupted by a signal is retried, as libbpf does.
const LOAD_ATTEMPTS: usize = 5;

/// Loads a program, retrying when the verifier gave up because a signal
/// arrived mid-verification (`EAGAIN`): the ancestor walk makes verification
/// long enough that a child's `SIGCHLD` can land inside it.
fn load(
    mut attempt: impl FnMut() -> Result<(), aya::programs::ProgramError>,
    program: &'static str,
) -> Result<(), DataplaneError> {
    let mut tries = 1;
    loop {
        match attempt() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < LOAD_ATTEMPTS =>
            {
                tries += 1;
            }
            result => {
                return result.map_err(|source| DataplaneError::LoadProgram { program, source })
            }
        }
    }
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::ProgramType {
            program: name,
            source,
        })
}

fn io(action: &'static str, path: &Path, source: std::io::Error) -> DataplaneError {
    DataplaneError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_and_foreign_names_are_ignored() {
        for hook in ATTACH_ORDER {
            let name = pin_name(hook, "0123456789abcdef");
            assert_eq!(parse_pin_name(&name), Some((hook, "0123456789abcdef")));
        }
        assert_eq!(
            parse_pin_name("egress_sock_ops@0123456789abcdef"),
            Some((Hook::SockOps, "0123456789abcdef"))
        );
        assert_eq!(
            ATTACH_ORDER.len(),
            Hook::ALL.len(),
            "every hook is attached"
        );
        assert_eq!(parse_pin_name("egress_skb"), None);
        assert_eq!(parse_pin_name("egress_skb@xyz"), None);
        assert_eq!(parse_pin_name("other_prog@0123456789abcdef"), None);
    }
}
