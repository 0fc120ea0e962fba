//! One name's addresses of one family (A or AAAA), with the expiry of each:
//! the pure bookkeeping behind TTLs, stale-if-error and refresh times.
//!
//! Each address is held on its own. An answer that no longer lists an
//! address does not drop it at once: clients that resolved the name a moment
//! ago may still connect to it until the TTL they were given runs out, so it
//! stays allowed until its own expiry. That is also what makes a change of
//! address gapless: the new set is published next to the old one first.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::ResolverSettings;

/// The two questions asked per name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) const BOTH: [Self; 2] = [Self::V4, Self::V6];

    pub(crate) fn record(self) -> &'static str {
        match self {
            Self::V4 => "A",
            Self::V6 => "AAAA",
        }
    }
}

/// What a lookup that got an answer said. A negative answer (NXDOMAIN, or
/// the name has no record of this type) is an answer with no addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) addrs: Vec<IpAddr>,
    /// As the server gave it; `None` for a negative answer without SOA.
    pub(crate) ttl: Option<Duration>,
}

/// The time rules, taken from [`ResolverSettings`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    ttl_min: Duration,
    ttl_max: Duration,
    stale_grace: Duration,
    refresh_lead: Duration,
    retry_min: Duration,
    retry_max: Duration,
    learn_grace: Duration,
}

impl From<&ResolverSettings> for Timing {
    fn from(s: &ResolverSettings) -> Self {
        Self {
            ttl_min: s.ttl_min,
            ttl_max: s.ttl_max,
            stale_grace: s.stale_grace,
            refresh_lead: s.refresh_lead,
            retry_min: s.retry_min,
            retry_max: s.retry_max,
            learn_grace: s.learn_grace,
        }
    }
}

impl Timing {
    fn ttl(&self, raw: Option<Duration>) -> Duration {
        raw.unwrap_or(self.ttl_min)
            .clamp(self.ttl_min, self.ttl_max)
    }

    /// Ask again this long after an answer with `ttl` (already clamped).
    fn refresh_after(&self, ttl: Duration) -> Duration {
        ttl - self.refresh_lead.min(ttl / 4)
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        self.retry_min
            .saturating_mul(1 << doublings)
            .min(self.retry_max)
    }
}

#[derive(Clone, Copy, Debug)]
struct Held {
    /// When the latest answer that listed this address expires.
    expires: Instant,
    /// A later answer did not list it: it goes at `expires`, grace or not.
    superseded: bool,
}

impl Held {
    /// When this address stops being allowed if nothing else is learned.
    fn drop_at(&self, timing: &Timing) -> Instant {
        if self.superseded {
            self.expires
        } else {
            // Nobody has said otherwise since it expired: either the refresh
            // is still under way or it failed. Stale-if-error covers both.
            self.expires + timing.stale_grace
        }
    }
}

/// A name's addresses of one family and when to ask for them again.
#[derive(Clone, Debug)]
pub(crate) struct RecordSet {
    held: BTreeMap<IpAddr, Held>,
    next_query: Instant,
    failures: u32,
}

impl RecordSet {
    /// A name never resolved: no addresses, to be asked at once.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            held: BTreeMap::new(),
            next_query: now,
            failures: 0,
        }
    }

    pub(crate) fn next_query(&self) -> Instant {
        self.next_query
    }

    pub(crate) fn answered(&mut self, now: Instant, answer: &Answer, timing: &Timing) {
        let ttl = timing.ttl(answer.ttl);
        let expires = now + ttl;
        for held in self.held.values_mut() {
            held.superseded = true;
        }
        for &addr in &answer.addrs {
            self.held
                .entry(addr)
                .and_modify(|held| {
                    // Never shorten: a client may hold the longer TTL it got.
                    held.expires = held.expires.max(expires);
                    held.superseded = false;
                })
                .or_insert(Held {
                    expires,
                    superseded: false,
                });
        }
        self.failures = 0;
        self.next_query = now + timing.refresh_after(ttl);
        self.prune(now, timing);
    }

    /// An answer the gateway itself received (through the agent's relay,
    /// [`super::relay`]): its addresses are added, each allowed for its TTL
    /// (clamped as for the agent's own answers) plus `learn_grace`, and
    /// nothing else changes. The gateway may hold an address until its TTL
    /// runs out and a little past it (connection pools, DNS caches that
    /// round up), and a rotating name hands out a different address to
    /// every asker, so one asker's answer supersedes nobody's.
    pub(crate) fn learned(&mut self, now: Instant, answer: &Answer, timing: &Timing) {
        let until = now + timing.ttl(answer.ttl) + timing.learn_grace;
        for &addr in &answer.addrs {
            self.held
                .entry(addr)
                .and_modify(|held| {
                    // Never shorten what the agent's own answers allow; an
                    // address of theirs keeps its stale-if-error grace.
                    held.expires = held.expires.max(until);
                })
                .or_insert(Held {
                    expires: until,
                    // A hard deadline: no stale grace on top of it.
                    superseded: true,
                });
        }
        self.prune(now, timing);
    }

    /// No usable answer: addresses stay until their grace ends, and the
    /// next try backs off.
    pub(crate) fn failed(&mut self, now: Instant, timing: &Timing) {
        self.failures = self.failures.saturating_add(1);
        self.next_query = now + timing.backoff(self.failures);
        self.prune(now, timing);
    }

    /// The addresses allowed at `now`, ascending.
    pub(crate) fn addresses<'a>(
        &'a self,
        now: Instant,
        timing: &'a Timing,
    ) -> impl Iterator<Item = IpAddr> + 'a {
        self.held
            .iter()
            .filter(move |(_, held)| now < held.drop_at(timing))
            .map(|(addr, _)| *addr)
    }

    /// The next time [`Self::addresses`] will change by itself.
    pub(crate) fn next_change(&self, now: Instant, timing: &Timing) -> Option<Instant> {
        self.held
            .values()
            .map(|held| held.drop_at(timing))
            .filter(|at| *at > now)
            .min()
    }

    fn prune(&mut self, now: Instant, timing: &Timing) {
        self.held.retain(|_, held| now < held.drop_at(timing));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn timing() -> Timing {
        Timing::from(&ResolverSettings {
            ttl_min: 5 * S,
            ttl_max: 3600 * S,
            stale_grace: 300 * S,
            refresh_lead: 2 * S,
            retry_min: S,
            retry_max: 30 * S,
            learn_grace: 30 * S,
            ..ResolverSettings::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn answer(addrs: &[&str], ttl: u64) -> Answer {
        Answer {
            addrs: addrs.iter().map(|a| ip(a)).collect(),
            ttl: Some(Duration::from_secs(ttl)),
        }
    }

    fn at(set: &RecordSet, now: Instant, t: &Timing) -> Vec<IpAddr> {
        set.addresses(now, t).collect()
    }

    #[test]
    fn never_resolved_has_no_addresses_and_is_due_now() {
        let (t, now) = (timing(), Instant::now());
        let set = RecordSet::new(now);
        assert!(at(&set, now, &t).is_empty());
        assert_eq!(set.next_query(), now);
    }

    #[test]
    fn ttl_is_clamped_and_refresh_comes_shortly_before_expiry() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["192.0.2.1"], 0), &t);
        // TTL 0 → 5 s; lead is min(2 s, 5 s / 4).
        assert_eq!(set.next_query(), t0 + 5 * S - 5 * S / 4);
        set.answered(t0, &answer(&["192.0.2.1"], 86_400), &t);
        assert_eq!(set.next_query(), t0 + 3600 * S - 2 * S);
    }

    #[test]
    fn an_address_dropped_from_the_answer_stays_until_its_own_expiry() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["192.0.2.1"], 60), &t);
        let t1 = t0 + 58 * S;
        set.answered(t1, &answer(&["192.0.2.2"], 60), &t);
        assert_eq!(at(&set, t1, &t), [ip("192.0.2.1"), ip("192.0.2.2")]);
        assert_eq!(set.next_change(t1, &t), Some(t0 + 60 * S));
        assert_eq!(at(&set, t0 + 60 * S, &t), [ip("192.0.2.2")]);
    }

    #[test]
    fn failures_keep_addresses_for_the_grace_then_drop_them() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["192.0.2.1"], 10), &t);
        set.failed(t0 + 9 * S, &t);
        assert_eq!(set.next_query(), t0 + 10 * S, "first retry after retry_min");
        set.failed(t0 + 10 * S, &t);
        assert_eq!(set.next_query(), t0 + 12 * S, "backoff doubles");
        assert_eq!(at(&set, t0 + 309 * S, &t), [ip("192.0.2.1")]);
        assert_eq!(set.next_change(t0 + 309 * S, &t), Some(t0 + 310 * S));
        assert!(at(&set, t0 + 310 * S, &t).is_empty());
    }

    #[test]
    fn backoff_is_capped() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        for _ in 0..40 {
            set.failed(t0, &t);
        }
        assert_eq!(set.next_query(), t0 + 30 * S);
    }

    #[test]
    fn negative_answer_empties_the_set_once_old_answers_expire() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["2001:db8::1"], 30), &t);
        let nx = Answer {
            addrs: Vec::new(),
            ttl: None,
        };
        set.answered(t0 + 29 * S, &nx, &t);
        assert_eq!(at(&set, t0 + 29 * S, &t), [ip("2001:db8::1")]);
        assert!(at(&set, t0 + 30 * S, &t).is_empty());
        // Negative answer without SOA: asked again after the minimum TTL.
        assert_eq!(set.next_query(), t0 + 29 * S + 5 * S - 5 * S / 4);
    }

    #[test]
    fn a_shorter_ttl_never_shortens_what_was_handed_out() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["192.0.2.1"], 600), &t);
        set.answered(t0 + S, &answer(&["192.0.2.1"], 5), &t);
        let next = set.drop_time(ip("192.0.2.1"), &t);
        assert_eq!(next, Some(t0 + 600 * S + 300 * S));
    }

    #[test]
    fn a_learned_answer_adds_its_addresses_for_ttl_plus_grace_and_supersedes_nothing() {
        let (t, t0) = (timing(), Instant::now());
        let mut set = RecordSet::new(t0);
        set.answered(t0, &answer(&["192.0.2.1"], 60), &t);
        // A rotating name: the gateway got another address, TTL 1 s.
        set.learned(t0 + S, &answer(&["192.0.2.9"], 1), &t);
        assert_eq!(at(&set, t0 + S, &t), [ip("192.0.2.1"), ip("192.0.2.9")]);
        // Clamped to ttl_min (5 s), plus the 30 s learn grace, then gone.
        assert_eq!(set.drop_time(ip("192.0.2.9"), &t), Some(t0 + 36 * S));
        assert!(!at(&set, t0 + 36 * S, &t).contains(&ip("192.0.2.9")));
        // The agent's own address keeps its stale-if-error grace.
        assert_eq!(set.drop_time(ip("192.0.2.1"), &t), Some(t0 + 360 * S));
        // Learning an address the agent holds never shortens it.
        set.learned(t0 + 2 * S, &answer(&["192.0.2.1"], 1), &t);
        assert_eq!(set.drop_time(ip("192.0.2.1"), &t), Some(t0 + 360 * S));
        // Nor does the agent's next refresh cut a learned one short.
        set.answered(t0 + 3 * S, &answer(&["192.0.2.1"], 60), &t);
        assert_eq!(set.drop_time(ip("192.0.2.9"), &t), Some(t0 + 36 * S));
    }

    impl RecordSet {
        fn drop_time(&self, addr: IpAddr, t: &Timing) -> Option<Instant> {
            self.held.get(&addr).map(|h| h.drop_at(t))
        }
    }
}
