//! How the resolver asks, and how long it trusts what it is told.

use std::{net::SocketAddr, time::Duration};

use super::ResolveError;

/// Which DNS servers answer the agent's questions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Upstream {
    /// The servers of `/etc/resolv.conf`. With host networking that is the
    /// node's DNS, which may answer differently from the cluster DNS the
    /// gateway asks; [`Upstream::Servers`] can point at the latter.
    #[default]
    System,
    /// These servers, in order (`egress-agent run --dns-server`, tests).
    Servers(Vec<SocketAddr>),
}

/// Resolver tuning. [`Default`] suits production; tests shrink the times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    pub upstream: Upstream,
    /// Answers with a shorter TTL are kept this long. TTLs of 0 or 1 s are
    /// common behind load balancers and CDNs; taken literally they would
    /// have the agent query in a loop and swap the kernel's allow-list on
    /// every rotation. 5 s bounds both, at the price of allowing an address
    /// that just left the record for at most this long.
    pub ttl_min: Duration,
    /// Answers with a longer TTL are re-checked after this long, so an
    /// operator's DNS change (or removal) takes effect within it even for
    /// records published with a TTL of a day.
    pub ttl_max: Duration,
    /// Stale-if-error: how long past its expiry an address stays allowed
    /// while no answer could be had (timeout, SERVFAIL). It covers a DNS
    /// outage without cutting the gateway off, and is bounded so that an
    /// address nobody can vouch for any more is eventually dropped: an
    /// unresolvable host is unreachable, never "allow all".
    pub stale_grace: Duration,
    /// How long before expiry a name is asked again (at most a quarter of
    /// its TTL), so that the fresh answer usually lands before the old one
    /// runs out.
    pub refresh_lead: Duration,
    /// Per-query timeout. Small: a slow answer only delays a refresh, and
    /// the stale grace covers the wait.
    pub query_timeout: Duration,
    /// Tries per server and question.
    pub attempts: usize,
    /// First delay before asking again after a failed lookup; doubles per
    /// consecutive failure up to [`Self::retry_max`].
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long past its TTL an address that a gateway was given (through
    /// the agent's DNS relay, `run --follow-gateway-dns`) stays allowed:
    /// clients round TTLs up, pool connections and cache answers a little
    /// longer than told. Bounded, so that a rotating name's addresses do
    /// not pile up.
    pub learn_grace: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            upstream: Upstream::System,
            ttl_min: Duration::from_secs(5),
            ttl_max: Duration::from_secs(3600),
            stale_grace: Duration::from_secs(300),
            refresh_lead: Duration::from_secs(2),
            query_timeout: Duration::from_secs(2),
            attempts: 2,
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            learn_grace: Duration::from_secs(60),
        }
    }
}

/// Longest duration any setting may have. Keeping every span this short
/// means `Instant + span` cannot overflow anywhere in the resolver.
const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);

impl ResolverSettings {
    /// Refuses settings the resolver could not honour.
    pub fn check(&self) -> Result<(), ResolveError> {
        let bad = |reason: String| Err(ResolveError::Settings { reason });
        let spans = [
            ("ttl_min", self.ttl_min),
            ("ttl_max", self.ttl_max),
            ("stale_grace", self.stale_grace),
            ("refresh_lead", self.refresh_lead),
            ("query_timeout", self.query_timeout),
            ("retry_min", self.retry_min),
            ("retry_max", self.retry_max),
            ("learn_grace", self.learn_grace),
        ];
        if let Some((field, span)) = spans.iter().find(|(_, span)| *span > LONGEST) {
            return bad(format!("{field} {span:?} is longer than {LONGEST:?}"));
        }
        for (field, span) in [
            ("ttl_min", self.ttl_min),
            ("query_timeout", self.query_timeout),
            ("retry_min", self.retry_min),
        ] {
            if span.is_zero() {
                return bad(format!("{field} must be positive"));
            }
        }
        if self.ttl_min > self.ttl_max {
            return bad(format!(
                "ttl_min {:?} exceeds ttl_max {:?}",
                self.ttl_min, self.ttl_max
            ));
        }
        if self.retry_min > self.retry_max {
            return bad(format!(
                "retry_min {:?} exceeds retry_max {:?}",
                self.retry_min, self.retry_max
            ));
        }
        if self.attempts == 0 {
            return bad("attempts must be at least 1".to_owned());
        }
        if self.upstream == Upstream::Servers(Vec::new()) {
            return bad("the explicit DNS server list is empty".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_their_own_check() {
        assert!(ResolverSettings::default().check().is_ok());
    }

    #[test]
    fn inverted_ttl_bounds_are_refused_with_both_values() {
        let settings = ResolverSettings {
            ttl_min: Duration::from_secs(10),
            ttl_max: Duration::from_secs(1),
            ..ResolverSettings::default()
        };
        let msg = settings.check().map_err(|e| e.to_string()).unwrap_err();
        assert!(msg.contains("ttl_min 10s exceeds ttl_max 1s"), "{msg}");
    }

    #[test]
    fn empty_server_list_is_refused() {
        let settings = ResolverSettings {
            upstream: Upstream::Servers(Vec::new()),
            ..ResolverSettings::default()
        };
        assert!(settings.check().is_err());
    }
}
