//! A client for the test API servers (`apiserver-diff`'s and k8s-test's),
//! which serve a self-signed certificate on loopback and take a bearer
//! token.

use anyhow::Context as _;
use kube::Client;

/// A client of `server` (`https://…`) with `token`, as `impersonate` when
/// given. The server's certificate is not checked: the tests made it.
pub fn client(server: &str, token: &str, impersonate: Option<String>) -> anyhow::Result<Client> {
    let mut config = kube::Config::new(server.parse().context("--server")?);
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.to_owned().into());
    config.auth_info.impersonate = impersonate;
    Client::try_from(config).context("client")
}

/// The runtime the API server tools run their clients on: two workers, as
/// the agent has.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// The API resource of a kind the test tools create without discovery
/// (`group` empty for the core group).
pub fn resource(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}
