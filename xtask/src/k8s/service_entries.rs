//! Istio ServiceEntries as a gateway's allow-list, on the real cluster:
//! Istio's ServiceEntry CRD installed from a manifest (no Istio control
//! plane), the walkthrough's `cnn` ServiceEntry, and a second gateway
//! whose EgressGateway says `allowedHosts: fromServiceEntries`.

use std::time::{Duration, Instant};

use super::{
    kubectl::Kubectl,
    scenario::{self, Checks, Cluster, Outcome},
};

/// Istio's ServiceEntry CRD, reduced to what an API server needs.
pub const CRD: &str = include_str!("istio/serviceentry-crd.yaml");
/// The walkthrough's ServiceEntry for edition.cnn.com.
const CNN: &str = include_str!("istio/cnn-serviceentry.yaml");

/// Installs the CRD and waits until the API server serves it. Run before
/// the agents start: they look for Istio's API at start, then every 30 s.
pub fn install_crd(kubectl: &Kubectl) -> anyhow::Result<()> {
    kubectl.apply(CRD)?;
    kubectl.run(&[
        "wait",
        "--for=condition=Established",
        "crd/serviceentries.networking.istio.io",
        "--timeout=60s",
    ])
}

/// Polls `se-gateway → ip:80` until it is `want` (30 s at most); the
/// outcome and how long it took, in ms.
fn until(cluster: &Cluster<'_>, ip: &str, want: Outcome) -> anyhow::Result<(Outcome, f64)> {
    scenario::poll_outcome(cluster.kubectl, "istio-system", "se-gateway", ip, 80, want)
}

pub fn run(cluster: &Cluster<'_>, checks: &mut Checks) -> anyhow::Result<()> {
    let k = cluster.kubectl;
    let (cnn_name, cnn_ip) = cluster.allowed_host;
    let (other_name, other_ip) = cluster.other_host;
    // Its own pod and EgressGateway, allowed what the visible
    // ServiceEntries list.
    k.apply(&scenario::gateway_yaml(
        cluster,
        "se-gateway",
        " fromServiceEntries",
    ))?;
    scenario::wait_ready(
        k,
        "istio-system",
        "pod/se-gateway",
        Duration::from_secs(120),
    )?;

    // No ServiceEntry yet: `fromServiceEntries` allows nothing. (Until the
    // agent has the new pod it is pending, refused too.)
    let (outcome, _) = until(cluster, cnn_ip, Outcome::Eperm)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("no ServiceEntry: se-gateway → {cnn_name} {cnn_ip}:80 denied (fromServiceEntries, nothing listed)"),
        &format!("{outcome:?}"),
    );

    let began = Instant::now();
    k.apply(CNN)?;
    let (outcome, took) = until(cluster, cnn_ip, Outcome::Ok)?;
    checks.check(
        outcome == Outcome::Ok,
        &format!(
            "ServiceEntry default/cnn (networking.istio.io/v1alpha3, the walkthrough's) applied: \
             se-gateway → {cnn_name}:80 allowed ({took:.0} ms; {:.0} ms after the apply)",
            began.elapsed().as_secs_f64() * 1000.0
        ),
        &format!("{outcome:?}"),
    );
    let (outcome, text) = scenario::probe(k, "istio-system", "se-gateway", other_ip, 80)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!("se-gateway → {other_name} {other_ip}:80 denied (in no ServiceEntry)"),
        &text,
    );

    // A ServiceEntry the agent cannot use is quarantined alone: cnn's
    // hosts stay allowed.
    k.apply(
        "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: broken
  namespace: default
spec:
  hosts: [broken.example]
  ports: [{number: 70000, name: http, protocol: HTTP}]
",
    )?;
    let events = wait_for_event(k, "broken")?;
    checks.check(
        events.contains("70000"),
        "a ServiceEntry with port 70000 is quarantined, with an Event on it naming the field",
        &events,
    );
    let (outcome, _) = scenario::probe(k, "istio-system", "se-gateway", cnn_ip, 80)?;
    checks.check(
        outcome == Outcome::Ok,
        &format!("with default/broken quarantined, se-gateway → {cnn_name}:80 still allowed"),
        &format!("{outcome:?}"),
    );

    let began = Instant::now();
    k.run(&["delete", "serviceentry", "-n", "default", "cnn", "broken"])?;
    let (outcome, took) = until(cluster, cnn_ip, Outcome::Eperm)?;
    checks.check(
        outcome == Outcome::Eperm,
        &format!(
            "ServiceEntry deleted: se-gateway → {cnn_name}:80 denied again ({took:.0} ms; {:.0} ms after the delete)",
            began.elapsed().as_secs_f64() * 1000.0
        ),
        &format!("{outcome:?}"),
    );
    k.run(&[
        "delete",
        "pod,egressgateway",
        "-n",
        "istio-system",
        "se-gateway",
        "--wait=false",
    ])?;
    Ok(())
}

/// The Events about ServiceEntry `default/name`, once there is one (20 s
/// at most).
fn wait_for_event(k: &Kubectl, name: &str) -> anyhow::Result<String> {
    let began = Instant::now();
    loop {
        let text = k.output(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.kind=ServiceEntry,involvedObject.name={name}"),
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
            "--no-headers",
        ])?;
        if !text.trim().is_empty() || began.elapsed() > Duration::from_secs(20) {
            return Ok(text.trim().to_owned());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
