//! Loading the embedded object into the kernel.

use std::{collections::HashMap, net::IpAddr, path::PathBuf};

use aya::{
    maps::{LpmTrie, MapData, PerCpuArray},
    programs::{CgroupSkb, CgroupSockAddr},
    Ebpf, EbpfLoader,
};
use egress_common::{program, Counter, DenyRule, DENY_V4_MAP, DENY_V6_MAP, VERDICTS_MAP};
use ipnet::IpNet;

use super::{
    attach::{Hook, LinkId},
    deny::DenyList,
    object, DataplaneError, VerdictCounts,
};
use crate::sys;

/// One loaded copy of the egress programs and their maps.
///
/// Every `Dataplane` has its own maps, so two of them (two agents, or two
/// tests in one process) never see each other's deny lists. Dropping it
/// detaches its programs from every cgroup.
///
/// Minimum kernel: 5.7 for the links aya creates (older kernels fall back to
/// `BPF_PROG_ATTACH`); 4.17 for `connect4`/`connect6`; 4.11 for LPM tries.
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) deny: DenyList,
    verdicts: PerCpuArray<MapData, u64>,
    pub(super) links: HashMap<(Hook, PathBuf), LinkId>,
}

impl Dataplane {
    /// Loads the embedded object and runs every program through the
    /// verifier, so that a program the kernel rejects fails here, at
    /// start-up, rather than at the first attach.
    pub fn load() -> Result<Self, DataplaneError> {
        // Non-fatal by design; see `sys::raise_memlock_limit`.
        let memlock = sys::raise_memlock_limit().err();
        let mut ebpf = EbpfLoader::new()
            .load(object::bytes())
            .map_err(|source| DataplaneError::LoadObject { source, memlock })?;

        let egress: &mut CgroupSkb = program_mut(&mut ebpf, program::EGRESS_SKB)?;
        egress
            .load()
            .map_err(|source| DataplaneError::LoadProgram {
                program: program::EGRESS_SKB,
                source,
            })?;
        for name in [program::CONNECT4, program::CONNECT6] {
            let prog: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?;
            prog.load().map_err(|source| DataplaneError::LoadProgram {
                program: name,
                source,
            })?;
        }

        // The maps are taken out of `ebpf` so that they can be borrowed
        // independently of the programs; the loaded programs keep their own
        // references to them in the kernel.
        let deny = DenyList::new(
            LpmTrie::try_from(take_map(&mut ebpf, DENY_V4_MAP)?)
                .map_err(|source| layout(DENY_V4_MAP, source))?,
            LpmTrie::try_from(take_map(&mut ebpf, DENY_V6_MAP)?)
                .map_err(|source| layout(DENY_V6_MAP, source))?,
        );
        let verdicts = PerCpuArray::try_from(take_map(&mut ebpf, VERDICTS_MAP)?)
            .map_err(|source| layout(VERDICTS_MAP, source))?;

        Ok(Self {
            ebpf,
            deny,
            verdicts,
            links: HashMap::new(),
        })
    }

    /// Denies traffic to every address in `prefix`, from every cgroup the
    /// programs are attached to. Takes effect for the next packet and the
    /// next `connect()`; established connections are cut at the packet level.
    ///
    /// IPv4-mapped IPv6 prefixes are stored as IPv4 (see
    /// [`Dataplane::denied`]).
    pub fn deny(&mut self, prefix: IpNet, rule: DenyRule) -> Result<(), DataplaneError> {
        self.deny.insert(prefix, rule)
    }

    /// Lifts the deny for exactly `prefix` (not for prefixes inside or
    /// around it). Returns whether it was there.
    pub fn remove_deny(&mut self, prefix: IpNet) -> Result<bool, DataplaneError> {
        self.deny.remove(prefix)
    }

    /// The denied prefixes as stored: host bits cleared, IPv4-mapped IPv6
    /// prefixes as IPv4.
    pub fn denied(&self) -> Result<Vec<(IpNet, DenyRule)>, DataplaneError> {
        self.deny.entries()
    }

    /// The rule that denies traffic to `addr`, if any: the kernel's own
    /// longest-prefix match, so it answers exactly as the programs do.
    pub fn deny_rule_for(&self, addr: IpAddr) -> Result<Option<DenyRule>, DataplaneError> {
        self.deny.lookup(addr)
    }

    /// The verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<VerdictCounts, DataplaneError> {
        let mut counts = [0u64; Counter::COUNT as usize];
        for counter in Counter::ALL {
            let per_cpu = self.verdicts.get(&counter.index(), 0).map_err(|source| {
                DataplaneError::ReadMap {
                    map: VERDICTS_MAP,
                    source,
                }
            })?;
            counts[counter.index() as usize] = per_cpu.iter().sum();
        }
        Ok(VerdictCounts::from_counts(counts))
    }
}

pub(super) fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, DataplaneError>
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

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DataplaneError> {
    ebpf.take_map(name).ok_or(DataplaneError::MissingMap(name))
}

fn layout(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::MapLayout { map, source }
}
