//! Attaching the programs to cgroup v2 directories.

use std::{fmt, fs::File, path::Path};

use aya::programs::{
    cgroup_skb::CgroupSkbLinkId, cgroup_sock_addr::CgroupSockAddrLinkId, CgroupAttachMode,
    CgroupSkb, CgroupSkbAttachType, CgroupSockAddr,
};
use egress_common::program;

use super::{load::program_mut, Dataplane, DataplaneError};
use crate::sys;

/// A place in the kernel where one of the programs runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `cgroup_skb/egress`: every packet the cgroup's sockets send. The
    /// guarantee; the other hooks only make refusals fast and explicit.
    Egress,
    /// `cgroup/connect4`: `connect()` on IPv4 sockets, refused with EPERM.
    Connect4,
    /// `cgroup/connect6`: `connect()` on IPv6 sockets (including to
    /// IPv4-mapped addresses), refused with EPERM.
    Connect6,
}

impl Hook {
    /// Every hook, in the order [`Dataplane::attach_all`] attaches them: the
    /// packet-level guarantee first, so there is no window in which only
    /// the connect hooks are active.
    pub const ALL: [Hook; 3] = [Hook::Egress, Hook::Connect4, Hook::Connect6];

    /// The program that runs at this hook.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Egress => program::EGRESS_SKB,
            Hook::Connect4 => program::CONNECT4,
            Hook::Connect6 => program::CONNECT6,
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::Egress => "cgroup_skb/egress",
            Hook::Connect4 => "cgroup/connect4",
            Hook::Connect6 => "cgroup/connect6",
        })
    }
}

/// The handle aya returns for an attachment, by program type.
#[derive(Debug)]
pub(super) enum LinkId {
    Skb(CgroupSkbLinkId),
    SockAddr(CgroupSockAddrLinkId),
}

impl Dataplane {
    /// Attaches every program to `cgroup`, a cgroup v2 directory. They then
    /// apply to all processes in it and in its descendants.
    pub fn attach_all(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        for hook in Hook::ALL {
            self.attach(cgroup, hook)?;
        }
        Ok(())
    }

    /// Attaches the program of `hook` to `cgroup`.
    ///
    /// On kernels >= 5.7 aya attaches through a `bpf_link`, which the kernel
    /// always treats as `BPF_F_ALLOW_MULTI` (and `link_create` rejects the
    /// flag itself with EINVAL, hence the default mode below): programs that
    /// others (systemd, another agent) attach to the same cgroup or its
    /// ancestors keep running, a packet must pass all of them, and a
    /// descendant cgroup cannot override the deny.
    pub fn attach(&mut self, cgroup: &Path, hook: Hook) -> Result<(), DataplaneError> {
        let key = (hook, cgroup.to_owned());
        if self.links.contains_key(&key) {
            return Err(DataplaneError::AlreadyAttached { hook, path: key.1 });
        }
        let dir = open_cgroup2(cgroup)?;
        let attach_err = |source| DataplaneError::Attach {
            hook,
            path: cgroup.to_owned(),
            source,
        };
        let mode = CgroupAttachMode::default();
        let link = match hook {
            Hook::Egress => {
                let prog: &mut CgroupSkb = program_mut(&mut self.ebpf, hook.program())?;
                LinkId::Skb(
                    prog.attach(&dir, CgroupSkbAttachType::Egress, mode)
                        .map_err(attach_err)?,
                )
            }
            Hook::Connect4 | Hook::Connect6 => {
                // The attach type (connect4 or connect6) comes from the
                // program's ELF section.
                let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, hook.program())?;
                LinkId::SockAddr(prog.attach(&dir, mode).map_err(attach_err)?)
            }
        };
        self.links.insert(key, link);
        Ok(())
    }

    /// Detaches the program of `hook` from `cgroup`.
    pub fn detach(&mut self, cgroup: &Path, hook: Hook) -> Result<(), DataplaneError> {
        let link = self
            .links
            .remove(&(hook, cgroup.to_owned()))
            .ok_or_else(|| DataplaneError::NotAttached {
                hook,
                path: cgroup.to_owned(),
            })?;
        let detach_err = |source| DataplaneError::Detach {
            hook,
            path: cgroup.to_owned(),
            source,
        };
        match link {
            LinkId::Skb(id) => {
                let prog: &mut CgroupSkb = program_mut(&mut self.ebpf, hook.program())?;
                prog.detach(id).map_err(detach_err)
            }
            LinkId::SockAddr(id) => {
                let prog: &mut CgroupSockAddr = program_mut(&mut self.ebpf, hook.program())?;
                prog.detach(id).map_err(detach_err)
            }
        }
    }

    /// Every `(hook, cgroup)` pair currently attached.
    pub fn attachments(&self) -> impl Iterator<Item = (Hook, &Path)> + '_ {
        self.links
            .keys()
            .map(|(hook, path)| (*hook, path.as_path()))
    }
}

fn open_cgroup2(path: &Path) -> Result<File, DataplaneError> {
    let is_cgroup2 = sys::is_cgroup2_dir(path).map_err(|source| DataplaneError::InspectCgroup {
        path: path.to_owned(),
        source,
    })?;
    if !is_cgroup2 {
        return Err(DataplaneError::NotCgroup2 {
            path: path.to_owned(),
        });
    }
    File::open(path).map_err(|source| DataplaneError::OpenCgroup {
        path: path.to_owned(),
        source,
    })
}
