//! Drains the programs' `EVENTS` ring buffer into the [`EventHub`].

use std::sync::{Arc, RwLock};

use aya::maps::{MapData, RingBuf};
use egress_common::Event;
use tokio::io::unix::AsyncFd;
use tracing::warn;

use super::{wallclock::WallClock, EventHub, Names, VerdictEvent};

/// Reads until the ring's fd fails. The kernel wakes the fd when data is
/// there; between wake-ups this task costs nothing.
pub async fn run(ring: RingBuf<MapData>, hub: EventHub, names: Arc<RwLock<Names>>) {
    let clock = WallClock::now();
    // SAFETY: the ring owns its map fd, which stays open and the same
    // for as long as the AsyncFd owns the ring.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot poll the event ring; no verdict events");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "event ring poll failed; no more verdict events");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let raw = decode(&item);
            drop(item);
            let names = names
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match raw.and_then(|raw| VerdictEvent::decode(&raw, &names, &clock)) {
                Some(event) => hub.publish(event),
                None => hub.undecodable(),
            }
        }
        guard.clear_ready();
    }
}

/// The event in a ring record; `None` if the record is too short.
fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<Event>() {
        return None;
    }
    // SAFETY: `Event` is plain old data (repr(C), integers and byte
    // arrays), the length is checked, and the read is unaligned.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}
