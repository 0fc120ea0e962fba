//! Sidecar mode: take connections the redirect sent to port 15001, recover
//! where each was going, and connect there, directly or through the egress
//! gateway.

use std::{net::SocketAddr, sync::atomic::Ordering::Relaxed};

use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{
    forward,
    original_dst::{original_dst, unmap},
    proxy_protocol,
    sniff::Host,
    stats, Outcome, Record, Shared,
};

/// Where the sidecar sends what it accepts.
#[derive(Clone, Debug, Default)]
pub struct Sidecar {
    /// `None`: straight to the original destination.
    pub via_gateway: Option<GatewayAddr>,
}

/// `--via-gateway HOST:PORT`, resolved per connection so a gateway
/// Service's name keeps working when its address changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAddr {
    pub host: Host,
    pub port: u16,
}

impl std::str::FromStr for GatewayAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            let host = addr.ip().to_string().parse().map_err(|e| format!("{e}"))?;
            return Ok(Self {
                host,
                port: addr.port(),
            });
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port in {s:?}"))?;
        let host = host.parse().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Self { host, port })
    }
}

/// Handles one redirected connection.
pub(super) async fn handle(
    sidecar: &Sidecar,
    shared: &Shared,
    client: TcpStream,
    record: &mut Record,
) -> Outcome {
    let destination = match original_dst(&client) {
        Ok(d) => d,
        Err(e) => return Outcome::denied(e),
    };
    record.original_dst = Some(destination);
    // Nothing redirected a direct connection to the listener: conntrack
    // then reports the listener itself. Proxying it would dial ourselves.
    let local = client.local_addr().ok().map(unmap);
    if local == Some(destination) || shared.connector.is_own(destination) {
        return Outcome::denied(format!(
            "original destination {destination} is this proxy: not redirected (loop)"
        ));
    }
    let cluster_name = stats::cluster_name(destination.port(), &destination.ip().to_string());
    let cluster = shared.stats.cluster(&cluster_name);
    record.cluster = Some(cluster_name);

    let targets = match &sidecar.via_gateway {
        None => Ok(vec![destination]),
        Some(gw) => shared.connector.resolve(&gw.host, gw.port).await,
    };
    let connected = match targets {
        Ok(addrs) => shared.connector.connect(&addrs).await,
        Err(e) => Err(e),
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(e) => {
            shared.upstream_failed(&e);
            cluster.upstream_cx_connect_fail.fetch_add(1, Relaxed);
            return Outcome::allowed(Some(&e.to_string()));
        }
    };
    record.upstream = upstream.peer_addr().ok();
    if sidecar.via_gateway.is_some() {
        let header = match proxy_protocol::encode(record.downstream, destination) {
            Ok(h) => h,
            Err(e) => return Outcome::allowed(Some(&e.to_string())),
        };
        if let Err(e) = upstream.write_all(&header).await {
            return Outcome::allowed(Some(&format!("PROXY header to the gateway: {e}")));
        }
    }
    cluster.upstream_cx_total.fetch_add(1, Relaxed);
    forward(shared, client, upstream, &[], record, &cluster).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_addresses() {
        let a: GatewayAddr = "istio-egressgateway.istio-system:443"
            .parse()
            .expect("name");
        assert_eq!(
            (a.host.as_str(), a.port),
            ("istio-egressgateway.istio-system", 443)
        );
        let b: GatewayAddr = "[2001:db8::1]:443".parse().expect("v6");
        assert_eq!(b.host.as_str(), "2001:db8::1");
        assert!("gateway".parse::<GatewayAddr>().is_err());
        assert!("gateway:0".parse::<GatewayAddr>().is_err());
    }
}
