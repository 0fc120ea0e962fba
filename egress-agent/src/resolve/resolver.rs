//! The handle the agent holds: starts the refresh task, swaps the watched
//! names on policy reload, and hands out the published snapshots.

use std::collections::{BTreeMap, BTreeSet};

use hickory_resolver::proto::rr::Name;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    query::Querier,
    refresh::{Learned, LookupFailures, Refresher},
    relay::Learner,
    ResolveError, ResolvedHosts, ResolverSettings,
};

/// Relayed answers waiting for the refresh task. A full queue makes the
/// relay wait, which delays that gateway's answer, never drops it.
const LEARN_QUEUE: usize = 1024;

/// Keeps the addresses of a set of DNS names current, following each
/// answer's TTL.
///
/// Every change of the address sets is published once on the channel from
/// [`HostResolver::subscribe`]; an unchanged refresh publishes nothing, so
/// each notification is worth a data-plane generation swap. A and AAAA are
/// asked separately, so a new name's IPv4 addresses may be published a
/// moment before its IPv6 ones. Dropping the handle stops the task.
///
/// ```no_run
/// # async fn demo() -> Result<(), egress_agent::resolve::ResolveError> {
/// use egress_agent::resolve::{HostResolver, ResolverSettings};
///
/// let resolver = HostResolver::spawn(
///     ResolverSettings::default(),
///     ["api.example.com".to_owned()],
/// )?;
/// let mut hosts = resolver.subscribe();
/// while hosts.changed().await.is_ok() {
///     let snapshot = hosts.borrow_and_update().clone();
///     // program the allow-list with `snapshot`
/// #   let _ = snapshot;
/// }
/// # Ok(()) }
/// ```
pub struct HostResolver {
    names: watch::Sender<BTreeMap<String, Name>>,
    hosts: watch::Receiver<ResolvedHosts>,
    failures: watch::Receiver<LookupFailures>,
    servers: String,
    learn: mpsc::Sender<Learned>,
    upstream: std::sync::Arc<[std::net::SocketAddr]>,
    query_timeout: std::time::Duration,
    task: JoinHandle<()>,
}

impl HostResolver {
    /// Starts resolving `names` (as written in the policy, e.g. from
    /// [`super::dns_names`]) on the current Tokio runtime.
    pub fn spawn(
        settings: ResolverSettings,
        names: impl IntoIterator<Item = String>,
    ) -> Result<Self, ResolveError> {
        settings.check()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ResolveError::NoRuntime)?;
        let names = qualify(names)?;
        let querier = Querier::new(&settings)?;
        let servers = querier.servers().to_owned();
        let upstream = querier.addrs();
        let (learn, learned) = mpsc::channel(LEARN_QUEUE);
        let (names_tx, names_rx) = watch::channel(names);
        let (hosts_tx, hosts) = watch::channel(ResolvedHosts::default());
        let (failures_tx, failures) = watch::channel(LookupFailures::default());
        let refresher = Refresher::new(querier, &settings, hosts_tx, failures_tx);
        let task = runtime.spawn(refresher.run(names_rx, learned));
        Ok(Self {
            names: names_tx,
            hosts,
            failures,
            servers,
            learn,
            upstream,
            query_timeout: settings.query_timeout,
            task,
        })
    }

    /// Replaces the watched names (policy reload). Names kept keep their
    /// addresses and schedule; new ones are asked at once; removed ones
    /// disappear from the next snapshot. Nothing is changed when a name is
    /// invalid.
    pub fn set_names(&self, names: impl IntoIterator<Item = String>) -> Result<(), ResolveError> {
        let names = qualify(names)?;
        self.names.send(names).map_err(|_| ResolveError::Stopped)
    }

    /// The watched names.
    pub fn names(&self) -> BTreeSet<String> {
        self.names.borrow().keys().cloned().collect()
    }

    /// Snapshots of the addresses, notified only when they change.
    pub fn subscribe(&self) -> watch::Receiver<ResolvedHosts> {
        self.hosts.clone()
    }

    /// The current snapshot.
    pub fn hosts(&self) -> ResolvedHosts {
        self.hosts.borrow().clone()
    }

    /// The names whose latest lookup failed, with why (for logs and
    /// `explain`); a name leaves it on its next answer.
    pub fn failures(&self) -> watch::Receiver<LookupFailures> {
        self.failures.clone()
    }

    /// What the gateways' DNS relay needs: the servers to forward to (the
    /// ones the agent asks) and the way to hand over what it learns.
    pub fn learner(&self) -> Learner {
        Learner {
            learn: self.learn.clone(),
            upstream: std::sync::Arc::clone(&self.upstream),
            timeout: self.query_timeout,
        }
    }

    /// The DNS servers asked, `IP:PORT, …`.
    pub fn servers(&self) -> &str {
        &self.servers
    }
}

impl Drop for HostResolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parses each name as fully qualified (see [`Querier::ask`]).
fn qualify(
    names: impl IntoIterator<Item = String>,
) -> Result<BTreeMap<String, Name>, ResolveError> {
    names
        .into_iter()
        .map(|name| {
            let fqdn = format!("{}.", name.trim_end_matches('.'));
            match Name::from_ascii(&fqdn) {
                Ok(parsed) if !name.is_empty() => Ok((name, parsed)),
                Ok(_) => Err(ResolveError::InvalidName {
                    name,
                    source: "empty name".into(),
                }),
                Err(source) => Err(ResolveError::InvalidName { name, source }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_queried_fully_qualified() {
        let names = qualify(["api.example.com".to_owned()]).expect("valid");
        assert!(names["api.example.com"].is_fqdn());
    }

    #[test]
    fn an_invalid_name_is_refused_by_name() {
        let err = qualify(["bad..name".to_owned()]).expect_err("invalid");
        assert!(err.to_string().contains("\"bad..name\""), "{err}");
    }

    #[test]
    fn spawning_outside_a_runtime_is_an_error_not_a_panic() {
        let err = HostResolver::spawn(ResolverSettings::default(), Vec::new())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("the DNS resolver must be started from within a Tokio runtime")
        );
    }
}
