//! kube-dns: dnsmasq in a pod on node A, behind the `kube-dns` Service at
//! [`DNS_SERVICE_IP`] (the kubelets' `--cluster-dns`), so that pods
//! resolve through a ClusterIP and kube-proxy, as on any cluster.
//!
//! dnsmasq answers for the internet's hosts, and for the cluster's
//! Services (`<name>.<namespace>.svc.cluster.local`) from a hosts
//! directory that it watches with inotify. The test keeps that directory
//! in step with the API, as CoreDNS's kubernetes plugin does: a `kubectl
//! get services --watch` runs for the life of the cluster, and on each
//! change the Services are listed again and the file is rewritten.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    kubectl::Kubectl,
    layout::{self, DNS_SERVICE_IP, INTERNET_HOSTS, NODE_A, NODE_B},
    scenario::{self, Cluster},
};

/// The records dir on the host (node A's kube-dns mounts it).
fn records_dir() -> PathBuf {
    layout::state("dns/records")
}

/// Starts the record sync, kube-dns and its Service; returns the sync's
/// kubectl (to reap) once a lookup through the Service from node B
/// answers, and how long that took from the pod's creation.
pub fn start(cluster: &Cluster<'_>) -> anyhow::Result<(Child, Duration)> {
    fs::create_dir_all(records_dir()).context("creating the DNS records dir")?;
    let sync = start_sync(cluster.kubectl)?;
    let records: String = INTERNET_HOSTS
        .iter()
        .map(|(host, addr)| format!(" --host-record={host},{addr}"))
        .collect();
    // --local: cluster.local is answered here only (NXDOMAIN for what is
    // not a Service); --hostsdir: the Services' records, re-read on change.
    // --server: the rotating name's zone goes to its own server, as a
    // stub zone would (see gateway_dns).
    let script = format!(
        "exec dnsmasq --keep-in-foreground --user=root --no-resolv --no-hosts \
         --local=/cluster.local/ --hostsdir=/etc/dns-records --log-queries \
         --server=/{zone}/{server} --log-facility=-{records}",
        zone = super::gateway_dns::ZONE,
        server = super::gateway_dns::server(),
    );
    let yaml = format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
{selector}  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  dnsPolicy: Default
  containers:
  - name: dnsmasq
    image: {image}
    imagePullPolicy: {policy}
    command: [sh, -c, '{script}']
    volumeMounts:
    - name: records
      mountPath: /etc/dns-records
      readOnly: true
  volumes:
  - name: records
    hostPath:
      path: {dir}
      type: Directory
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  clusterIP: {DNS_SERVICE_IP}
  selector:
    k8s-app: kube-dns
  ports:
  - name: dns
    port: 53
    protocol: UDP
  - name: dns-tcp
    port: 53
    protocol: TCP
",
        selector = scenario::node_selector(Some(NODE_A.name)),
        image = cluster.toolbox_image,
        policy = cluster.image_pull_policy,
        dir = records_dir().display(),
    );
    let began = Instant::now();
    cluster.kubectl.apply(&yaml)?;
    scenario::wait_ready(
        cluster.kubectl,
        "kube-system",
        "pod/kube-dns",
        Duration::from_secs(120),
    )?;
    // Through the Service from the other node: kube-proxy's DNAT on B,
    // the route to A's pod subnet, the reply's un-DNAT.
    let (host, addr) = INTERNET_HOSTS[0];
    let limit = Duration::from_secs(60);
    loop {
        let out = Command::new("nsenter")
            .arg(format!(
                "--net={}",
                layout::netns_path(NODE_B.name).display()
            ))
            .args(["busybox", "nslookup", host, DNS_SERVICE_IP])
            .output()
            .context("running nslookup in node B")?;
        if String::from_utf8_lossy(&out.stdout).contains(addr) {
            break;
        }
        if began.elapsed() > limit {
            bail!(
                "{host} does not resolve through the kube-dns Service {DNS_SERVICE_IP} from {} \
                 after {}s: {}",
                NODE_B.name,
                limit.as_secs(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok((sync, began.elapsed()))
}

/// The watch, and a thread that rewrites the records on every event.
fn start_sync(kubectl: &Kubectl) -> anyhow::Result<Child> {
    write_records(kubectl)?;
    let log = fs::File::create(layout::log("dns-sync")).context("creating dns-sync's log")?;
    let mut child = kubectl
        .command()
        .args(["get", "services", "-A", "--watch-only", "-o", "name"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting kubectl get services --watch")?;
    let stdout = child.stdout.take().context("the watch's stdout")?;
    let kubectl = kubectl.clone();
    // Ends when the watch's stdout closes (the teardown kills it).
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if line.is_err() {
                break;
            }
            if let Err(err) = write_records(&kubectl) {
                eprintln!("k8s-test: dns-sync: {err:#}");
            }
        }
    });
    Ok(child)
}

/// Lists the Services and writes `<clusterIP> <name>.<ns>.svc.cluster.local`
/// for each, atomically (dnsmasq must never read half a file).
fn write_records(kubectl: &Kubectl) -> anyhow::Result<()> {
    let list = kubectl.output(&[
        "get",
        "services",
        "-A",
        "-o",
        r#"jsonpath={range .items[*]}{.spec.clusterIP} {.metadata.name} {.metadata.namespace}{"\n"}{end}"#,
    ])?;
    let text = records(&list);
    let tmp = layout::state("dns/services.tmp");
    fs::write(&tmp, text).context("writing the DNS records")?;
    fs::rename(&tmp, records_dir().join("services")).context("publishing the DNS records")
}

/// hosts-file lines for `<clusterIP> <name> <namespace>` lines; headless
/// Services (no ClusterIP) get none.
fn records(list: &str) -> String {
    list.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            let (ip, name, ns) = (w.next()?, w.next()?, w.next()?);
            (ip != "None" && !ip.is_empty())
                .then(|| format!("{ip} {name}.{ns}.svc.cluster.local\n"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_become_cluster_local_records_and_headless_ones_are_skipped() {
        let list = "10.96.0.1 kubernetes default\n10.96.0.10 kube-dns kube-system\nNone db apps\n";
        assert_eq!(
            records(list),
            "10.96.0.1 kubernetes.default.svc.cluster.local\n\
             10.96.0.10 kube-dns.kube-system.svc.cluster.local\n"
        );
    }
}
