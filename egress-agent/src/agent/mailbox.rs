//! The one slot between the event loop and the apply worker.
//!
//! The loop posts a [`Request`] for each trigger and goes on; the worker
//! takes everything posted so far as one piece of [`Work`]. A request
//! posted while the worker waits wakes it at once: a lone change is
//! applied with no delay. Requests posted while it applies merge in the
//! slot, and the worker takes them together when it is done: a burst
//! becomes one apply, right after the one in progress.
//!
//! Merging loses nothing, because every request names the newest state
//! rather than a change: a reload reads the policy files as they are when
//! it runs, and an inventory or a set of addresses replaces the last.

use std::{
    mem,
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use crate::{inventory::Inventory, resolve::ResolvedHosts};

/// What the event loop asks of the apply worker.
#[derive(Debug)]
pub enum Request {
    /// Read the policy files again and apply them (a file completed,
    /// SIGHUP, the first apply).
    Reload,
    /// The API server's newest inventory: reload with it.
    Inventory(Inventory),
    /// New `allowedHosts` addresses, for the plan in force.
    Hosts(ResolvedHosts),
}

/// The requests posted since the worker last took its work, merged: of
/// each kind, only the newest counts.
#[derive(Debug, Default)]
pub struct Work {
    /// A reload is due.
    pub reload: bool,
    /// The inventory to reload with, when a new one came.
    pub inventory: Option<Inventory>,
    /// The addresses to program, when new ones came.
    pub hosts: Option<ResolvedHosts>,
}

impl Work {
    /// Merges `request` in.
    pub fn add(&mut self, request: Request) {
        match request {
            Request::Reload => self.reload = true,
            Request::Inventory(inventory) => {
                self.inventory = Some(inventory);
                self.reload = true;
            }
            Request::Hosts(hosts) => self.hosts = Some(hosts),
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.reload && self.hosts.is_none()
    }
}

/// What [`Mailbox::take`] found.
#[derive(Debug)]
pub enum Taken {
    Work(Work),
    /// Nothing was posted before the deadline.
    Idle,
    /// The mailbox was closed: the worker stops.
    Closed,
}

/// Requests from the event loop, merged until the worker takes them.
#[derive(Debug, Default)]
pub struct Mailbox {
    slot: Mutex<Slot>,
    posted: Condvar,
}

#[derive(Debug, Default)]
struct Slot {
    work: Work,
    closed: bool,
}

impl Mailbox {
    /// Merges `request` into the work not taken yet, and wakes the worker.
    /// Returns false, and drops it, once the mailbox is closed.
    pub fn post(&self, request: Request) -> bool {
        let mut slot = self.lock();
        if slot.closed {
            return false;
        }
        slot.work.add(request);
        self.posted.notify_one();
        true
    }

    /// Takes everything posted so far, waiting for something until
    /// `deadline`.
    pub fn take(&self, deadline: Instant) -> Taken {
        let mut slot = self.lock();
        loop {
            if slot.closed {
                return Taken::Closed;
            }
            if !slot.work.is_empty() {
                return Taken::Work(mem::take(&mut slot.work));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Taken::Idle;
            }
            slot = self
                .posted
                .wait_timeout(slot, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Stops the worker at its next take. What it has not taken is dropped:
    /// the agent is exiting, and the next one's first apply reads
    /// everything again.
    pub fn close(&self) {
        self.lock().closed = true;
        self.posted.notify_all();
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        // The slot is consistent after every statement: a panic elsewhere
        // while it was held leaves nothing half-done.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, thread, time::Duration};

    use super::*;
    use crate::compile::Guards;

    /// An inventory told apart by its guarded roots.
    fn inventory(n: usize) -> Inventory {
        Inventory {
            guards: Guards {
                pending: vec![format!("root-{n}")],
                exempt: vec![],
            },
            ..Inventory::default()
        }
    }

    fn hosts(n: u8) -> ResolvedHosts {
        ResolvedHosts::new([(
            "api.example.com".to_owned(),
            vec![std::net::IpAddr::from([192, 0, 2, n])],
        )])
    }

    #[test]
    fn a_burst_is_taken_as_one_piece_of_work_with_the_newest_of_each_kind() {
        let mailbox = Mailbox::default();
        for n in 0..10 {
            assert!(mailbox.post(Request::Inventory(inventory(n))));
            assert!(mailbox.post(Request::Hosts(hosts(n as u8))));
            assert!(mailbox.post(Request::Reload));
        }
        let Taken::Work(work) = mailbox.take(Instant::now()) else {
            panic!("the burst is there");
        };
        assert!(work.reload);
        assert_eq!(work.inventory, Some(inventory(9)));
        assert_eq!(work.hosts, Some(hosts(9)));
        assert!(
            matches!(mailbox.take(Instant::now()), Taken::Idle),
            "all of it was taken at once"
        );
    }

    #[test]
    fn an_inventory_alone_is_a_reload_and_addresses_alone_are_not() {
        let mut work = Work::default();
        assert!(work.is_empty());
        work.add(Request::Hosts(hosts(1)));
        assert!(!work.is_empty() && !work.reload);
        work.add(Request::Inventory(inventory(1)));
        assert!(work.reload);
    }

    #[test]
    fn a_lone_request_wakes_a_waiting_worker() {
        let mailbox = Arc::new(Mailbox::default());
        let worker = {
            let mailbox = Arc::clone(&mailbox);
            // A deadline far beyond any wake-up: only a post ends the wait
            // with work.
            thread::spawn(move || mailbox.take(Instant::now() + Duration::from_secs(600)))
        };
        mailbox.post(Request::Reload);
        let taken = worker.join().expect("the worker");
        assert!(
            matches!(taken, Taken::Work(Work { reload: true, .. })),
            "{taken:?}"
        );
    }

    #[test]
    fn nothing_posted_is_idle_at_the_deadline() {
        let mailbox = Mailbox::default();
        let taken = mailbox.take(Instant::now() + Duration::from_millis(20));
        assert!(matches!(taken, Taken::Idle), "{taken:?}");
    }

    #[test]
    fn closing_stops_the_worker_and_drops_what_it_had_not_taken() {
        let mailbox = Arc::new(Mailbox::default());
        let worker = {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || mailbox.take(Instant::now() + Duration::from_secs(600)))
        };
        mailbox.close();
        assert!(matches!(worker.join().expect("the worker"), Taken::Closed));
        assert!(!mailbox.post(Request::Reload), "refused once closed");
        assert!(matches!(mailbox.take(Instant::now()), Taken::Closed));
    }
}
