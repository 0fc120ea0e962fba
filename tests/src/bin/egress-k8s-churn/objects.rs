//! The API objects the churn writes, as JSON, and one untyped way to
//! create, merge-patch and delete them (typed k8s-openapi has no v1beta1
//! EndpointSlice, which is what 1.20 serves).

use anyhow::Context as _;
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::DynamicObject,
    discovery::ApiResource,
    Api, Client,
};
use serde_json::{json, Value};

pub use integration_tests::apiserver::resource;

/// The probe pod's namespace, name and label (its policy selects it).
pub const PROBE_NS: &str = "bench";
pub const PROBE_POD: &str = "probe";
/// The address the probe connects to (on the namespace's loopback), and the
/// one a deny-all-but-this policy allows instead.
pub const TARGET: &str = "192.0.2.50";
pub const ELSEWHERE: &str = "198.51.100.1/32";
/// The probe pod's own address (what a kubelet would report).
pub const PROBE_IP: &str = "192.0.2.60";
/// CIDRs per NetworkPolicy when many are loaded through the API: 10k
/// `ipBlock`s are ~360 KB of JSON, well under etcd's 1.5 MiB request limit
/// (the API server's own limit is 3 MiB); 100k in one object would exceed
/// both.
pub const CIDRS_PER_POLICY: usize = 10_000;

pub fn pods() -> ApiResource {
    resource("", "v1", "Pod", "pods")
}
pub fn policies() -> ApiResource {
    resource(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
    )
}
pub fn slices() -> ApiResource {
    resource(
        "discovery.k8s.io",
        "v1beta1",
        "EndpointSlice",
        "endpointslices",
    )
}

/// The API of `resource` in `ns` (none: a cluster-scoped kind).
fn api(client: &Client, resource: &ApiResource, ns: &str) -> Api<DynamicObject> {
    if ns.is_empty() {
        Api::all_with(client.clone(), resource)
    } else {
        Api::namespaced_with(client.clone(), ns, resource)
    }
}

/// Creates `object` (in its namespace), or merges it into the existing one.
/// Returns the stored object.
pub async fn put(
    client: &Client,
    resource: &ApiResource,
    object: &Value,
) -> anyhow::Result<DynamicObject> {
    let o: DynamicObject = serde_json::from_value(object.clone()).context("object")?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let api = api(client, resource, &ns);
    match api.create(&PostParams::default(), &o).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .patch(&name, &PatchParams::default(), &Patch::Merge(object))
            .await
            .with_context(|| format!("updating {} {ns}/{name}", resource.kind)),
        Err(e) => Err(e).with_context(|| format!("creating {} {ns}/{name}", resource.kind)),
    }
}

/// Replaces the whole object with one PUT (no resourceVersion: an
/// unconditional update, so the timed write is one request), or creates it
/// when missing.
pub async fn replace(
    client: &Client,
    resource: &ApiResource,
    object: &Value,
) -> anyhow::Result<()> {
    let o: DynamicObject = serde_json::from_value(object.clone()).context("object")?;
    let name = o.metadata.name.clone().unwrap_or_default();
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let api = api(client, resource, &ns);
    match api.replace(&name, &PostParams::default(), &o).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            api.create(&PostParams::default(), &o)
                .await
                .with_context(|| format!("creating {} {ns}/{name}", resource.kind))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("replacing {} {ns}/{name}", resource.kind)),
    }
}

pub async fn merge(
    client: &Client,
    resource: &ApiResource,
    ns: &str,
    name: &str,
    patch: &Value,
) -> anyhow::Result<()> {
    api(client, resource, ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching {} {ns}/{name}", resource.kind))?;
    Ok(())
}

pub async fn status(client: &Client, ns: &str, name: &str, ip: &str) -> anyhow::Result<()> {
    api(client, &pods(), ns)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                "hostIP": "192.0.2.1"
            }})),
        )
        .await
        .with_context(|| format!("setting the status of {ns}/{name}"))?;
    Ok(())
}

/// Deletes; a missing object is not an error (the churn may race itself).
pub async fn delete(
    client: &Client,
    resource: &ApiResource,
    ns: &str,
    name: &str,
) -> anyhow::Result<()> {
    match api(client, resource, ns)
        .delete(name, &DeleteParams::default().grace_period(0))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting {} {ns}/{name}", resource.kind)),
    }
}

/// A pod as `egress-k8s-mem create` makes them (so the churn's pods look
/// like the cluster's), bound to `node`.
pub fn pod(ns: &str, name: &str, app: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"app": app, "version": "v1"}},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app", "image": "registry.example/shop/app:1.4.2",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
            }]
        }
    })
}

/// NetworkPolicy number `i` of the cluster: app-`i % 200` in ns-`i % 20`
/// may reach the next app's pods on 8080 and one /32 (its `variant`
/// changes under churn).
pub fn policy(i: usize, variant: usize) -> Value {
    let v = u32::try_from(variant % 65_536).unwrap_or(0);
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("np-{i:04}"), "namespace": format!("ns-{}", i % 20)},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", i % 200)}},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [{"namespaceSelector": {},
                         "podSelector": {"matchLabels": {"app": format!("app-{}", (i + 1) % 200)}}}],
                 "ports": [{"protocol": "TCP", "port": 8080}]},
                {"to": [{"ipBlock": {"cidr": format!("172.16.{}.{}/32", v >> 8, v & 255)}}]}
            ]
        }
    })
}

/// EndpointSlice `i`: two endpoints, on fake nodes.
pub fn slice(i: usize, variant: usize) -> Value {
    let a = format!("10.{}.{}.{}", 64 + (variant % 64), (i >> 8) & 255, i & 255);
    json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i:04}-abcde"), "namespace": format!("ns-{}", i % 20),
                     "labels": {"kubernetes.io/service-name": format!("svc-{i:04}")}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [a], "conditions": {"ready": true},
             "topology": {"kubernetes.io/hostname": format!("node-{}", i % 100)}}
        ],
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]
    })
}

/// The probe pod's policy: egress to `cidrs` only.
pub fn probe_policy(name: &str, cidrs: &[String]) -> Value {
    let to: Vec<Value> = cidrs
        .iter()
        .map(|c| json!({"ipBlock": {"cidr": c}}))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": PROBE_NS},
        "spec": {
            "podSelector": {"matchLabels": {"app": PROBE_POD}},
            "policyTypes": ["Egress"],
            "egress": [{"to": to}]
        }
    })
}

/// `n` distinct /32s that never touch (from 10.128.0.0, as egress-bench's),
/// the last one the probe's target when `with_target`.
pub fn cidrs(n: usize, offset: usize, with_target: bool) -> Vec<String> {
    let base = u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0));
    let mut out: Vec<String> = (offset..offset + n)
        .map(|i| {
            let step = u32::try_from(i).unwrap_or(0).saturating_mul(2);
            format!("{}/32", std::net::Ipv4Addr::from(base.saturating_add(step)))
        })
        .collect();
    if with_target {
        if let Some(last) = out.last_mut() {
            *last = format!("{TARGET}/32");
        }
    }
    out
}
