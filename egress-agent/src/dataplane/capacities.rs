//! Map capacities chosen when the object is loaded (`run --max-cidrs`),
//! rather than fixed in the object: a node with a million CIDRs in force
//! needs larger tries than one with a hundred, and an LPM trie costs
//! kernel memory only for the entries it holds, so raising the bound is
//! free until it is used.
//!
//! A pinned map keeps the size it was created with: the kernel cannot
//! resize a map, and the programs attached to it keep running on it while
//! an agent restarts. An agent asked for another size than the pinned
//! maps have refuses to start ([`DataplaneError::CapacityMismatch`]),
//! naming both sizes and the flag, rather than silently running with the
//! old bound.

use egress_common::{capacity, map};

use super::DataplaneError;

/// The command-line flag that sets [`Capacities::allow`].
pub const MAX_CIDRS_FLAG: &str = "--max-cidrs";

/// Capacities of the maps that bound how large a policy may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Entries of `ALLOW_V4` and of `ALLOW_V6` (each): prefixes per
    /// address family, summed over distinct policies and over the two
    /// generations an apply holds at once.
    pub allow: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            allow: capacity::ALLOW,
        }
    }
}

impl Capacities {
    /// The capacity asked for map `name` and the flag that sets it, for
    /// the maps this struct governs.
    pub(super) fn of(&self, name: &str) -> Option<(u32, &'static str)> {
        (name == map::ALLOW_V4 || name == map::ALLOW_V6).then_some((self.allow, MAX_CIDRS_FLAG))
    }

    /// Refuses a zero capacity, which the kernel rejects at map creation
    /// with a bare `EINVAL`.
    pub fn check(&self) -> Result<(), DataplaneError> {
        if self.allow == 0 {
            return Err(DataplaneError::ZeroCapacity {
                flag: MAX_CIDRS_FLAG,
            });
        }
        Ok(())
    }

    /// `source` as a [`DataplaneError::MapFull`] when it is the kernel
    /// refusing an insert into a full map this struct governs (an LPM
    /// trie answers `ENOSPC`, a hash map `E2BIG`); otherwise unchanged.
    pub(super) fn explain_full(&self, source: DataplaneError) -> DataplaneError {
        let DataplaneError::Write {
            map,
            what,
            source: aya::maps::MapError::SyscallError(err),
        } = source
        else {
            return source;
        };
        let full = matches!(
            err.io_error.raw_os_error(),
            Some(libc::ENOSPC | libc::E2BIG)
        );
        match self.of(map) {
            Some((capacity, flag)) if full => DataplaneError::MapFull {
                map,
                capacity,
                flag,
            },
            _ => DataplaneError::Write {
                map,
                what,
                source: aya::maps::MapError::SyscallError(err),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_objects_own_capacity() {
        assert_eq!(Capacities::default().allow, capacity::ALLOW);
        assert_eq!(
            Capacities::default().of(map::ALLOW_V6),
            Some((capacity::ALLOW, MAX_CIDRS_FLAG))
        );
        assert_eq!(Capacities::default().of(map::PORT_SETS), None);
    }

    #[test]
    fn a_full_trie_names_its_capacity_and_flag() {
        let caps = Capacities { allow: 8 };
        let full = DataplaneError::Write {
            map: map::ALLOW_V4,
            what: "10.0.0.0/8".into(),
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
        };
        let msg = caps.explain_full(full).to_string();
        assert!(msg.contains("ALLOW_V4") && msg.contains('8') && msg.contains("--max-cidrs"));
        let other = DataplaneError::Write {
            map: map::ALLOW_V4,
            what: "10.0.0.0/8".into(),
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            }),
        };
        assert!(matches!(
            caps.explain_full(other),
            DataplaneError::Write { .. }
        ));
    }
}
