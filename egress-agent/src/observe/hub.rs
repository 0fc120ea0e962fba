//! The agent's side of the event stream: the last events, and live ones
//! for followers.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
};

use tokio::sync::broadcast;

use super::VerdictEvent;

/// Bounded everywhere: `capacity` recent events, and a broadcast channel
/// of that size per follower; a follower that falls behind skips events
/// (counted in [`EventHub::lagged`]) rather than holding memory.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    recent: Mutex<VecDeque<VerdictEvent>>,
    capacity: usize,
    live: broadcast::Sender<VerdictEvent>,
    received: AtomicU64,
    undecodable: AtomicU64,
    lagged: AtomicU64,
    /// Redirect events by workload (bounded by the policy set's workloads).
    redirects: Mutex<BTreeMap<String, u64>>,
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        let (live, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                recent: Mutex::new(VecDeque::with_capacity(capacity)),
                capacity,
                live,
                received: AtomicU64::new(0),
                undecodable: AtomicU64::new(0),
                lagged: AtomicU64::new(0),
                redirects: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    pub fn publish(&self, event: VerdictEvent) {
        self.inner.received.fetch_add(1, Ordering::Relaxed);
        if event.verdict == super::Verdict::Redirect {
            if let Some(w) = &event.workload {
                *self
                    .inner
                    .redirects
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(w.clone())
                    .or_default() += 1;
            }
        }
        {
            let mut recent = self
                .inner
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if recent.len() == self.inner.capacity {
                recent.pop_front();
            }
            recent.push_back(event.clone());
        }
        // No follower is not an error.
        let _ = self.inner.live.send(event);
    }

    /// A raw event whose codes this build does not know.
    pub fn undecodable(&self) {
        self.inner.undecodable.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lagged(&self, n: u64) {
        self.inner.lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// The buffered events, oldest first.
    pub fn recent(&self) -> Vec<VerdictEvent> {
        self.inner
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Redirect events by workload.
    pub fn redirects(&self) -> Vec<(String, u64)> {
        self.inner
            .redirects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(w, n)| (w.clone(), *n))
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<VerdictEvent> {
        self.inner.live.subscribe()
    }

    pub fn stats(&self) -> HubStats {
        HubStats {
            received: self.inner.received.load(Ordering::Relaxed),
            undecodable: self.inner.undecodable.load(Ordering::Relaxed),
            follower_lagged: self.inner.lagged.load(Ordering::Relaxed),
            buffered: self
                .inner
                .recent
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len(),
            capacity: self.inner.capacity,
        }
    }
}

/// What the agent did with events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubStats {
    /// Events published (from the ring, and backstop drop reports).
    pub received: u64,
    pub undecodable: u64,
    /// Events a slow `events --follow` client skipped.
    pub follower_lagged: u64,
    pub buffered: usize,
    pub capacity: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Verdict;

    fn event(n: u64) -> VerdictEvent {
        VerdictEvent {
            time: String::new(),
            workload: None,
            cgroup_id: n,
            protocol: "tcp".into(),
            source: String::new(),
            destination: String::new(),
            verdict: Verdict::Deny,
            reason: String::new(),
            rule: String::new(),
            policy: String::new(),
            hook: String::new(),
            count: 1,
        }
    }

    #[test]
    fn keeps_the_last_events_only() {
        let hub = EventHub::new(2);
        for n in 0..5 {
            hub.publish(event(n));
        }
        let ids: Vec<u64> = hub.recent().iter().map(|e| e.cgroup_id).collect();
        assert_eq!(ids, [3, 4]);
        assert_eq!(hub.stats().received, 5);
    }
}
