//! The refresh task: asks each watched name again shortly before its answer
//! expires, and publishes the address sets whenever they change.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::proto::rr::Name;
use tokio::{
    sync::{mpsc, watch},
    task::{AbortHandle, Id, JoinError, JoinSet},
};

use super::{
    query::{display_name, Querier},
    record::{Answer, Family, RecordSet, Timing},
    ResolveError, ResolvedHosts, ResolverSettings,
};

/// An answer a gateway received for one of the watched names, relayed
/// by the agent ([`super::relay`]), to be added as
/// [`RecordSet::learned`] says.
#[derive(Debug)]
pub(crate) struct Learned {
    pub(crate) name: String,
    pub(crate) family: Family,
    pub(crate) answer: Answer,
}

/// Names whose latest lookup failed, with the error (the first family's,
/// when both failed).
pub type LookupFailures = BTreeMap<String, Arc<ResolveError>>;

type Key = (String, Family);

/// One question being tracked: a name's A or AAAA set.
struct Entry {
    fqdn: Name,
    set: RecordSet,
    /// Tells a lookup for this entry from one for an earlier entry of the
    /// same key (name removed and added back while it was in flight).
    epoch: u64,
    in_flight: Option<AbortHandle>,
    last_error: Option<Arc<ResolveError>>,
}

pub(crate) struct Refresher {
    querier: Querier,
    timing: Timing,
    entries: BTreeMap<Key, Entry>,
    lookups: JoinSet<Result<Answer, ResolveError>>,
    lookup_keys: HashMap<Id, (Key, u64)>,
    next_epoch: u64,
    hosts: watch::Sender<ResolvedHosts>,
    failures: watch::Sender<LookupFailures>,
}

/// How long to sleep when nothing is scheduled; any event wakes us anyway.
const IDLE: Duration = Duration::from_secs(3600);

impl Refresher {
    pub(crate) fn new(
        querier: Querier,
        settings: &ResolverSettings,
        hosts: watch::Sender<ResolvedHosts>,
        failures: watch::Sender<LookupFailures>,
    ) -> Self {
        Self {
            querier,
            timing: Timing::from(settings),
            entries: BTreeMap::new(),
            lookups: JoinSet::new(),
            lookup_keys: HashMap::new(),
            next_epoch: 0,
            hosts,
            failures,
        }
    }

    /// Runs until the [`super::HostResolver`] is dropped.
    pub(crate) async fn run(
        mut self,
        mut names: watch::Receiver<BTreeMap<String, Name>>,
        mut learned: mpsc::Receiver<Learned>,
    ) {
        let initial = names.borrow_and_update().clone();
        self.set_names(&initial, Instant::now());
        loop {
            let now = Instant::now();
            self.start_due(now);
            self.publish(now);
            let wake = self.next_wake(now).unwrap_or(now + IDLE);
            tokio::select! {
                changed = names.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let names = names.borrow_and_update().clone();
                    self.set_names(&names, Instant::now());
                }
                Some(done) = self.lookups.join_next_with_id() => {
                    self.finish(done, Instant::now());
                }
                Some(learned) = learned.recv() => self.learn(&learned, Instant::now()),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn set_names(&mut self, names: &BTreeMap<String, Name>, now: Instant) {
        self.entries.retain(|(name, _), entry| {
            let keep = names.contains_key(name);
            if let (false, Some(lookup)) = (keep, &entry.in_flight) {
                lookup.abort();
            }
            keep
        });
        for (name, fqdn) in names {
            for family in Family::BOTH {
                let key = (name.clone(), family);
                if self.entries.contains_key(&key) {
                    continue;
                }
                self.next_epoch += 1;
                self.entries.insert(
                    key,
                    Entry {
                        fqdn: fqdn.clone(),
                        set: RecordSet::new(now),
                        epoch: self.next_epoch,
                        in_flight: None,
                        last_error: None,
                    },
                );
            }
        }
    }

    fn start_due(&mut self, now: Instant) {
        for ((name, family), entry) in &mut self.entries {
            if entry.in_flight.is_some() || entry.set.next_query() > now {
                continue;
            }
            let querier = self.querier.clone();
            let (fqdn, family) = (entry.fqdn.clone(), *family);
            let lookup = self
                .lookups
                .spawn(async move { querier.ask(&fqdn, family).await });
            self.lookup_keys
                .insert(lookup.id(), ((name.clone(), family), entry.epoch));
            entry.in_flight = Some(lookup);
        }
    }

    fn finish(
        &mut self,
        done: Result<(Id, Result<Answer, ResolveError>), JoinError>,
        now: Instant,
    ) {
        let (id, result) = match done {
            Ok((id, result)) => (id, Some(result)),
            Err(err) => (err.id(), None),
        };
        let Some((key, epoch)) = self.lookup_keys.remove(&id) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&key).filter(|e| e.epoch == epoch) else {
            return; // The name was removed meanwhile.
        };
        entry.in_flight = None;
        let result = result.unwrap_or_else(|| {
            Err(ResolveError::LookupAborted {
                name: display_name(&entry.fqdn),
                record: key.1.record(),
                servers: self.querier.servers().to_owned(),
            })
        });
        match result {
            Ok(answer) => {
                entry.set.answered(now, &answer, &self.timing);
                entry.last_error = None;
            }
            Err(err) => {
                entry.set.failed(now, &self.timing);
                entry.last_error = Some(Arc::new(err));
            }
        }
    }

    /// Adds a relayed answer; one for a name no longer watched (removed
    /// while the query was under way) is dropped.
    fn learn(&mut self, learned: &Learned, now: Instant) {
        let key = (learned.name.clone(), learned.family);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.set.learned(now, &learned.answer, &self.timing);
        }
    }

    /// Publishes the address sets and failures, each only if it changed.
    fn publish(&self, now: Instant) {
        let mut by_name: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        let mut failures = LookupFailures::new();
        for ((name, _), entry) in &self.entries {
            by_name
                .entry(name)
                .or_default()
                .extend(entry.set.addresses(now, &self.timing));
            if let Some(err) = &entry.last_error {
                failures
                    .entry(name.clone())
                    .or_insert_with(|| Arc::clone(err));
            }
        }
        let hosts = ResolvedHosts::new(by_name.into_iter().map(|(n, a)| (n.to_owned(), a)));
        self.hosts.send_if_modified(|current| {
            let changed = *current != hosts;
            if changed {
                *current = hosts;
            }
            changed
        });
        self.failures.send_if_modified(|current| {
            let same = current.len() == failures.len()
                && current
                    .iter()
                    .zip(&failures)
                    .all(|((n1, e1), (n2, e2))| n1 == n2 && Arc::ptr_eq(e1, e2));
            if !same {
                *current = failures;
            }
            !same
        });
    }

    /// When the loop must next wake by itself: a refresh falls due or an
    /// address expires.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(|entry| {
                let query = entry.in_flight.is_none().then(|| entry.set.next_query());
                query
                    .into_iter()
                    .chain(entry.set.next_change(now, &self.timing))
            })
            .min()
    }
}
