//! A rolling update of the agent, as an operator runs one (`kubectl rollout
//! restart ds/egress-agent`), with a pod hammering the internet throughout
//! and a pod created right after; then what the simulated internet itself
//! saw from the pods while the agent was installed.
//!
//! The hammer's own log says what each attempt got; the internet side is
//! the proof: busybox httpd logs every request's source, and only the
//! egress gateway may appear there.

use std::{
    collections::BTreeSet,
    fs,
    time::{Duration, Instant},
};

use super::{
    kubectl::Kubectl,
    layout::{self, INTERNET_HOSTS},
    scenario::{self, pod_ip, pod_yaml_on, probe, wait_ready, Checks, Cluster, Outcome, AGENT_NS},
};

/// Tries the internet (an HTTP request, so that a success is logged at the
/// far side) every 50 ms until `/tmp/stop` exists, logging each outcome
/// and when (the node's uptime, the clock [`Cluster::node_uptime`] reads).
pub fn hammer_script(internet_ip: &str) -> String {
    format!(
        "while [ ! -e /tmp/stop ]; do \
         if out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 3 nc -w 2 {internet_ip} 80 2>&1); then \
         case \"$out\" in *HTTP/*) r=ok;; *) r=empty;; esac; \
         else case \"$out\" in *'not permitted'*) r=EPERM;; *) r=fail;; esac; fi; \
         echo \"$r $(cut -d' ' -f1 /proc/uptime)\"; sleep 0.05; done\n\
         echo done\n\
         exec sleep 3600"
    )
}

/// The rollout, checked; returns how long `kubectl rollout status` took.
pub fn run(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<Option<f64>> {
    let k = cluster.kubectl;
    let (_, internet_ip) = cluster.allowed_host;
    k.apply(&pod_yaml_on(
        cluster,
        "test-egress",
        "hammer",
        &[("app", "hammer")],
        &scenario::recorded(&hammer_script(internet_ip)),
        cluster.app_node,
    ))?;
    wait_ready(k, "test-egress", "pod/hammer", Duration::from_secs(120))?;
    let before = scenario::agent_pods(k, None)?;

    k.run(&[
        "rollout",
        "restart",
        "daemonset",
        "-n",
        AGENT_NS,
        "egress-agent",
    ])?;
    let began = Instant::now();
    let status = k.output(&[
        "rollout",
        "status",
        "daemonset",
        "-n",
        AGENT_NS,
        "egress-agent",
        "--timeout=300s",
    ]);
    let took = began.elapsed().as_secs_f64() * 1000.0;
    let after = scenario::agent_pods(k, None)?;
    let replaced = after.len() == before.len() && after.iter().all(|p| !before.contains(p));
    checks.check(
        status.is_ok() && replaced,
        "`kubectl rollout restart ds/egress-agent` completes, every agent replaced and Ready",
        &match &status {
            Ok(out) => format!(
                "{} in {took:.0} ms; agents [{}] → [{}]",
                out.lines().last().unwrap_or("").trim(),
                before.join(", "),
                after.join(", ")
            ),
            Err(err) => format!("{err:#}"),
        },
    );

    // A pod created right after the rollout gets its policy.
    k.apply(&pod_yaml_on(
        cluster,
        "test-egress",
        "after-rollout",
        &[("app", "after-rollout")],
        "exec sleep 3600",
        cluster.app_node,
    ))?;
    wait_ready(
        k,
        "test-egress",
        "pod/after-rollout",
        Duration::from_secs(120),
    )?;
    let ready = Instant::now();
    let gateway = pod_ip(k, "istio-system", "istio-egressgateway")?;
    // Until the agent has matched the pod it is pending and refused: wait
    // for the allowed flow, then check the denied one.
    let (allowed, text) =
        scenario::probe_until_ok(k, "test-egress", "after-rollout", &gateway, 80, ready)?;
    checks.check(
        allowed == Outcome::Ok,
        "a pod created right after the rollout: its allowed flow (to the gateway) works",
        &format!(
            "{text} ({:.0} ms after Ready)",
            ready.elapsed().as_secs_f64() * 1000.0
        ),
    );
    let (outcome, text) = probe(k, "test-egress", "after-rollout", internet_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        "a pod created right after the rollout: the internet is refused",
        &text,
    );

    let attempts = stop_hammer(k, "hammer")?;
    let reached = attempts.iter().filter(|a| a.0 == "ok").count();
    let refused = attempts.iter().filter(|a| a.0 == "EPERM").count();
    checks.check(
        !attempts.is_empty() && reached == 0,
        "test-egress/hammer tried the internet throughout the rollout: never got out",
        &format!(
            "{} attempts: {refused} refused (EPERM), {reached} reached it, {} other",
            attempts.len(),
            attempts.len() - refused - reached
        ),
    );
    for pod in ["hammer", "after-rollout"] {
        k.output(&["delete", "pod", "-n", "test-egress", pod, "--wait=false"])?;
    }
    Ok(status.is_ok().then_some(took))
}

/// Stops test-egress/`pod`'s [`hammer_script`] and returns its attempts:
/// each outcome with the node uptime it was logged at.
pub fn stop_hammer(k: &Kubectl, pod: &str) -> anyhow::Result<Vec<(String, f64)>> {
    k.exec_in("test-egress", pod, None, "touch /tmp/stop")?;
    let logs = scenario::output_until_done(k, "test-egress", pod, Duration::from_secs(30));
    Ok(logs
        .lines()
        .filter_map(|l| {
            let (outcome, at) = l.trim().split_once(' ')?;
            Some((outcome.to_owned(), at.parse().ok()?))
        })
        .collect())
}

/// Every source address the simulated internet's web servers logged a
/// request from (busybox httpd -v: `<ip>:<port>: response:<code>`).
fn internet_sources() -> BTreeSet<String> {
    let mut sources = BTreeSet::new();
    for (_, addr) in INTERNET_HOSTS {
        for port in ["80", "443"] {
            let log = fs::read_to_string(layout::log(&format!("httpd-{addr}-{port}")))
                .unwrap_or_default();
            for line in log.lines() {
                let ip = line.split_once(':').map_or("", |(ip, _)| ip);
                if ip.parse::<std::net::Ipv4Addr>().is_ok() {
                    sources.insert(ip.to_owned());
                }
            }
        }
    }
    sources
}

/// While the agent is installed, the internet sees requests from the
/// egress gateway only, whatever the other pods tried (and the scenario
/// has them try, with and without an agent running, and through a
/// rollout).
pub fn internet_saw_only_the_gateway(
    cluster: &Cluster<'_>,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let gateway = pod_ip(cluster.kubectl, "istio-system", "istio-egressgateway")?;
    let sources = internet_sources();
    let others: Vec<&String> = sources.iter().filter(|s| **s != gateway).collect();
    checks.check(
        sources.contains(&gateway) && others.is_empty(),
        &format!(
            "the simulated internet's web servers saw requests from the gateway ({gateway}) and no one else"
        ),
        &format!(
            "sources logged: [{}]",
            sources.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    );
    Ok(())
}
