//! DNS for `allowedHosts`: resolves the names an EgressGateway may reach,
//! follows each answer's TTL, and publishes the address sets when they
//! change, so that the data plane can swap in a new allow-list.
//!
//! Policy, deliberately fail-closed:
//! - A name never resolved has no addresses; NXDOMAIN or "no such record"
//!   is an empty answer. An absent name allows nothing.
//! - TTLs are clamped to [`ResolverSettings::ttl_min`],
//!   [`ResolverSettings::ttl_max`] (5 s, 1 h by default); the name is asked
//!   again [`ResolverSettings::refresh_lead`] before expiry.
//! - An address that a newer answer no longer lists stays until its own
//!   expiry (clients may still hold it), so a change publishes old + new
//!   first, then new alone: no gap.
//! - When a refresh fails (timeout, SERVFAIL, REFUSED), the last good
//!   addresses stay for [`ResolverSettings::stale_grace`] (5 min by default)
//!   past their expiry, then go. Retries back off from
//!   [`ResolverSettings::retry_min`] to [`ResolverSettings::retry_max`].
//!
//! With `run --follow-gateway-dns` the gateways' own DNS answers are added
//! too: [`relay`] answers their queries, and an answer for one of their
//! names is programmed before it is passed on.
//!
//! The DNS client is hickory's stub resolver, asking `/etc/resolv.conf`'s
//! servers or an explicit list ([`Upstream`]).

mod error;
mod hosts;
mod names;
mod query;
mod record;
mod refresh;
pub mod relay;
mod resolver;
mod settings;

pub use self::{
    error::ResolveError,
    hosts::ResolvedHosts,
    names::dns_names,
    refresh::LookupFailures,
    resolver::HostResolver,
    settings::{ResolverSettings, Upstream},
};
