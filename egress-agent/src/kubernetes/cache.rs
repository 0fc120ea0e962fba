//! A watch whose objects are kept only as what the agent makes of them.
//!
//! kube-runtime's reflector stores whole objects; at 10k pods that is tens
//! of MiB of managedFields, specs and statuses no policy reads. Here each
//! watch event is mapped at once (`map`: object → what to keep, `None` to
//! keep nothing) and only the result is stored, with the reflector's
//! semantics: a re-list (after a watch error, or a `410 Gone`) is buffered
//! and swapped in whole at its end, so a build never sees half a listing,
//! and objects that vanished during an outage are dropped at the swap.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use futures_util::{Stream, StreamExt as _};
use kube::{runtime::watcher, Resource, ResourceExt as _};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::errors::format_chain;

/// The kept values by `namespace/name` (`name` for cluster-scoped kinds),
/// in that order, so builds are deterministic.
pub type Items<T> = BTreeMap<String, T>;

struct Inner<T> {
    items: Items<T>,
    /// A re-list in progress.
    relist: Option<Items<T>>,
    /// Bumped on every change, so a build can tell nothing changed.
    generation: u64,
}

/// The kept values of one watched kind. Cloning shares the cache.
pub struct Cache<T> {
    inner: Arc<Mutex<Inner<T>>>,
    ready: watch::Receiver<bool>,
}

impl<T> Clone for Cache<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            ready: self.ready.clone(),
        }
    }
}

/// The writing side of a [`Cache`].
pub struct Writer<T> {
    inner: Arc<Mutex<Inner<T>>>,
    ready: watch::Sender<bool>,
}

/// An empty cache and its writer.
pub fn cache<T>() -> (Cache<T>, Writer<T>) {
    let inner = Arc::new(Mutex::new(Inner {
        items: Items::new(),
        relist: None,
        generation: 0,
    }));
    let (tx, rx) = watch::channel(false);
    (
        Cache {
            inner: Arc::clone(&inner),
            ready: rx,
        },
        Writer { inner, ready: tx },
    )
}

fn lock<T>(inner: &Mutex<Inner<T>>) -> MutexGuard<'_, Inner<T>> {
    // A panic while holding the lock leaves consistent maps (every update
    // is one insert, remove or swap), so a poisoned lock is still usable.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<T> Cache<T> {
    /// Waits for the first complete listing; false if the watch ended
    /// before it.
    pub async fn wait_until_ready(&mut self) -> bool {
        self.ready.wait_for(|r| *r).await.is_ok()
    }

    /// The change counter.
    pub fn generation(&self) -> u64 {
        lock(&self.inner).generation
    }

    /// Runs `f` on the kept values, under the lock: keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&Items<T>) -> R) -> R {
        f(&lock(&self.inner).items)
    }

    /// How many values are kept.
    pub fn len(&self) -> usize {
        lock(&self.inner).items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of an object: `namespace/name`, or `name`.
pub fn key<K: Resource>(o: &K) -> String {
    match o.namespace() {
        Some(ns) => format!("{ns}/{}", o.name_any()),
        None => o.name_any(),
    }
}

impl<T> Writer<T> {
    /// Applies one watch event, mapped by `map`. Returns true when the
    /// cache's content may have changed (callers then rebuild).
    pub fn apply<K: Resource>(
        &self,
        event: watcher::Event<K>,
        map: &impl Fn(&K) -> Option<T>,
    ) -> bool {
        let mut inner = lock(&self.inner);
        match event {
            watcher::Event::Init => {
                inner.relist = Some(Items::new());
                return false;
            }
            watcher::Event::InitApply(o) => {
                if let Some(v) = map(&o) {
                    let k = key(&o);
                    match inner.relist.as_mut() {
                        Some(relist) => {
                            relist.insert(k, v);
                        }
                        // InitApply always follows Init; if it did not,
                        // it is still the object's latest state.
                        None => {
                            inner.items.insert(k, v);
                        }
                    }
                }
                return false;
            }
            watcher::Event::InitDone => {
                if let Some(relist) = inner.relist.take() {
                    inner.items = relist;
                }
                inner.generation += 1;
                drop(inner);
                self.ready.send_replace(true);
                return true;
            }
            watcher::Event::Apply(o) => {
                let k = key(&o);
                match map(&o) {
                    Some(v) => inner.items.insert(k, v),
                    None => inner.items.remove(&k),
                };
            }
            watcher::Event::Delete(o) => {
                inner.items.remove(&key(&o));
            }
        }
        inner.generation += 1;
        true
    }
}

/// Feeds `cache` from a watch stream (a kube-runtime watcher with
/// backoff), signalling `touch` after each change. Errors are logged
/// (naming the kind) and retried by the watcher's backoff; the stream
/// itself never ends.
pub async fn feed<K, T, S>(
    stream: S,
    writer: Writer<T>,
    kind: String,
    map: impl Fn(&K) -> Option<T>,
    touch: mpsc::UnboundedSender<()>,
) where
    K: Resource,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut failing = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                if failing {
                    info!(kind = %kind, "watch of the Kubernetes API resumed");
                    failing = false;
                }
                if writer.apply(event, &map) {
                    let _ = touch.send(());
                }
            }
            Err(e) => {
                // Logged once per outage, then at debug: the backoff
                // retries for as long as it takes.
                if failing {
                    debug!(kind = %kind, error = %format_chain(&e), "watch still failing");
                } else {
                    warn!(kind = %kind, error = %format_chain(&e), "watch of the Kubernetes API failed; retrying with backoff (the policy in force stays)");
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    #[test]
    fn a_relist_is_swapped_in_whole_and_drops_what_vanished() {
        let (cache, writer) = cache::<String>();
        let map = |n: &Namespace| n.metadata.name.clone().filter(|n| n != "skip");
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(ns("a")),
            watcher::Event::InitApply(ns("skip")),
        ] {
            assert!(!writer.apply(e, &map));
        }
        assert!(cache.is_empty(), "nothing before the listing is complete");
        assert!(writer.apply(watcher::Event::InitDone, &map));
        assert_eq!(cache.len(), 1);
        assert!(*cache.ready.borrow());
        writer.apply(watcher::Event::Apply(ns("b")), &map);
        let g = cache.generation();
        // A re-list after an outage in which `a` was deleted.
        writer.apply(watcher::Event::Init, &map);
        writer.apply(watcher::Event::InitApply(ns("b")), &map);
        assert_eq!(cache.len(), 2, "the old content stays until the end");
        writer.apply(watcher::Event::InitDone, &map);
        assert!(cache.generation() > g);
        assert_eq!(
            cache.read(|items| items.keys().cloned().collect::<Vec<_>>()),
            ["b"]
        );
        // An update that maps to nothing removes the value.
        writer.apply(watcher::Event::Apply(ns("skip")), &map);
        writer.apply(watcher::Event::Delete(ns("b")), &map);
        assert!(cache.is_empty());
    }
}
