//! `egress-agent status --all-nodes`: one line per node's agent.
//!
//! The agents are found as the API server knows them: the endpoints of
//! their metrics Service (one per node, ready or not, with its node's
//! name). Each is then asked over HTTP for `/readyz` and `/metrics`, the
//! same endpoints Prometheus and the kubelet use, so the summary needs no
//! access to any node's socket and no write anywhere.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use k8s_openapi::api::core::v1::Endpoints;
use kube::Api;
use serde::Serialize;

use super::args::{Output, StatusArgs};

/// How long one agent may take to answer one request.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What one node's agent reports.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    pub node: String,
    pub address: SocketAddr,
    /// `/readyz`: a generation applied by this agent is in force.
    pub ready: bool,
    pub generation: Option<u64>,
    pub pending_pods: Option<u64>,
    pub pending_oldest_seconds: Option<u64>,
    /// API objects held at their last good version, replaced by a
    /// deny-all stand-in, or left out.
    pub quarantined_objects: Option<u64>,
    pub apply_failures: Option<u64>,
    pub reload_failures: Option<u64>,
    pub programs_attached: Option<u64>,
    /// Why the agent could not be asked, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeSummary {
    /// Nothing known yet but where the agent is.
    fn new(node: String, address: SocketAddr) -> Self {
        Self {
            node,
            address,
            ready: false,
            generation: None,
            pending_pods: None,
            pending_oldest_seconds: None,
            quarantined_objects: None,
            apply_failures: None,
            reload_failures: None,
            programs_attached: None,
            error: None,
        }
    }
}

#[derive(Serialize)]
struct Report<'a> {
    nodes: &'a [NodeSummary],
}

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (namespace, name) = args
        .service
        .split_once('/')
        .ok_or_else(|| anyhow!("--service {:?}: expected NAMESPACE/NAME", args.service))?;
    let agents = endpoints(args, namespace, name)?;
    if agents.is_empty() {
        eprintln!("Service {namespace}/{name} has no endpoints: no agent is running");
        return Ok(ExitCode::FAILURE);
    }
    let nodes: Vec<NodeSummary> = agents
        .into_iter()
        .map(|(node, address)| ask(node, address))
        .collect();
    match args.output {
        Output::Json | Output::Yaml => {
            super::print_structured(&Report { nodes: &nodes }, args.output)?
        }
        Output::Text | Output::Wide => print!("{}", table(&nodes, args.output == Output::Wide)),
    }
    Ok(if nodes.iter().all(|n| n.error.is_none()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `(node, address)` of every endpoint of the Service, ready or not,
/// sorted by node.
fn endpoints(
    args: &StatusArgs,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let endpoints = runtime.block_on(async {
        let client = match &args.kubeconfig {
            Some(path) => egress_agent::kubernetes::client(Some(path)).await?,
            None => kube::Client::try_default()
                .await
                .context("no in-cluster configuration and no kubeconfig")?,
        };
        Api::<Endpoints>::namespaced(client, namespace)
            .get(name)
            .await
            .with_context(|| format!("reading the Endpoints of Service {namespace}/{name}"))
    })?;
    let mut found = Vec::new();
    for subset in endpoints.subsets.unwrap_or_default() {
        let port = subset
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .or_else(|| subset.ports.as_deref().and_then(<[_]>::first))
            .map(|p| p.port)
            .context("the Service's endpoints have no port")?;
        let port = u16::try_from(port).with_context(|| format!("port {port}"))?;
        let addresses = subset.addresses.iter().flatten();
        let not_ready = subset.not_ready_addresses.iter().flatten();
        for address in addresses.chain(not_ready) {
            let ip: IpAddr = address
                .ip
                .parse()
                .with_context(|| format!("endpoint address {:?}", address.ip))?;
            let node = address.node_name.clone().unwrap_or_else(|| ip.to_string());
            found.push((node, SocketAddr::new(ip, port)));
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Asks one agent for `/readyz` and `/metrics`.
fn ask(node: String, address: SocketAddr) -> NodeSummary {
    let mut summary = NodeSummary::new(node, address);
    match get(address, "/readyz") {
        Ok((status, _)) => summary.ready = status == 200,
        Err(e) => {
            summary.error = Some(format!("{e:#}"));
            return summary;
        }
    }
    match get(address, "/metrics") {
        Ok((200, text)) => {
            let m = Metrics(&text);
            summary.generation = m.sum("egress_policy_generation");
            summary.pending_pods = m.sum("egress_pending_pods");
            summary.pending_oldest_seconds = m.sum("egress_pending_oldest_seconds");
            summary.quarantined_objects = m.sum("egress_quarantined_objects");
            summary.apply_failures = m.sum("egress_apply_failures_total");
            summary.reload_failures = m.sum("egress_reload_failures_total");
            summary.programs_attached = m.sum("egress_programs_attached");
        }
        Ok((status, _)) => summary.error = Some(format!("/metrics answered {status}")),
        Err(e) => summary.error = Some(format!("{e:#}")),
    }
    summary
}

/// One HTTP/1.0 GET: the status code and the body. The agents serve
/// plain HTTP on the node's address; a client this small needs no TLS,
/// pooling or redirects.
fn get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading {path} from {address}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{address}{path}: no HTTP header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{address}{path}: no status code"))?;
    Ok((status, body.to_owned()))
}

/// Prometheus text, read for a few samples.
struct Metrics<'a>(&'a str);

impl Metrics<'_> {
    /// The sum of every sample of `name` (all label sets): 0 for a family
    /// described but without samples (a labelled gauge with nothing to
    /// count), `None` if the agent does not have it at all.
    fn sum(&self, name: &str) -> Option<u64> {
        let described = self
            .0
            .lines()
            .any(|l| l.strip_prefix("# TYPE ").and_then(|t| t.split(' ').next()) == Some(name));
        let mut total = described.then_some(0);
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            if sample != name {
                continue;
            }
            let value: f64 = line.rsplit(' ').next()?.parse().ok()?;
            *total.get_or_insert(0) += value as u64;
        }
        total
    }
}

/// kubectl-style columns; `wide` adds the failure counters and the
/// oldest pending pod's age.
fn table(nodes: &[NodeSummary], wide: bool) -> String {
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut rows = vec![{
        let mut header = vec![
            "NODE",
            "ADDRESS",
            "READY",
            "GENERATION",
            "PENDING",
            "QUARANTINED",
        ];
        if wide {
            header.extend([
                "OLDEST-PENDING",
                "APPLY-FAILURES",
                "RELOAD-FAILURES",
                "PROGRAMS",
                "ERROR",
            ]);
        }
        header.into_iter().map(str::to_owned).collect::<Vec<_>>()
    }];
    for n in nodes {
        let mut row = vec![
            n.node.clone(),
            n.address.to_string(),
            if n.error.is_some() {
                "Unknown".to_owned()
            } else if n.ready {
                "True".to_owned()
            } else {
                "False".to_owned()
            },
            show(n.generation),
            show(n.pending_pods),
            show(n.quarantined_objects),
        ];
        if wide {
            row.extend([
                n.pending_oldest_seconds
                    .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
                show(n.apply_failures),
                show(n.reload_failures),
                show(n.programs_attached),
                n.error.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP egress_policy_generation Generation in force (0 = none).
# TYPE egress_policy_generation gauge
egress_policy_generation 7
# TYPE egress_pending_oldest_seconds gauge
egress_pending_pods 2
egress_quarantined_objects{kind=\"Pod\",namespace=\"a\",name=\"b\",held=\"leftout\"} 1
egress_quarantined_objects{kind=\"NetworkPolicy\",namespace=\"a\",name=\"c\",held=\"lastgood\"} 1
egress_apply_failures_total 0
# EOF
";

    #[test]
    fn samples_are_summed_over_label_sets() {
        let m = Metrics(SCRAPE);
        assert_eq!(m.sum("egress_policy_generation"), Some(7));
        assert_eq!(m.sum("egress_quarantined_objects"), Some(2));
        assert_eq!(m.sum("egress_apply_failures_total"), Some(0));
        assert_eq!(m.sum("egress_pending"), None, "a prefix is not a name");
        assert_eq!(m.sum("egress_reload_failures_total"), None);
        assert_eq!(
            m.sum("egress_pending_oldest_seconds"),
            Some(0),
            "described, no sample"
        );
    }

    #[test]
    fn the_table_has_kubectl_columns() {
        let nodes = [
            NodeSummary {
                ready: true,
                generation: Some(7),
                pending_pods: Some(0),
                quarantined_objects: Some(2),
                ..NodeSummary::new("node-a".into(), "10.0.0.1:9464".parse().unwrap())
            },
            NodeSummary {
                error: Some("connecting to 10.0.0.2:9464: refused".into()),
                ..NodeSummary::new("node-b".into(), "10.0.0.2:9464".parse().unwrap())
            },
        ];
        let text = table(&nodes, false);
        let lines: Vec<&str> = text.lines().collect();
        let cells = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            cells(lines[0]),
            [
                "NODE",
                "ADDRESS",
                "READY",
                "GENERATION",
                "PENDING",
                "QUARANTINED"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            ["node-a", "10.0.0.1:9464", "True", "7", "0", "2"]
        );
        assert!(lines[2].contains("Unknown"), "{text}");
        assert!(table(&nodes, true).contains("refused"));
    }
}
