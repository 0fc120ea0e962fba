//! YAML shared by the data plane scenarios.

/// Workload `prod/client` (cgroup `$ROOT/prod/client`, label `app: client`),
/// isolated for egress by NetworkPolicy `prod/client` with `egress` as its
/// rules: YAML list items indented by two spaces, or empty to deny
/// everything.
pub fn isolated_client(egress: &str) -> String {
    format!(
        r#"
apiVersion: egress.enforcer.dev/v1alpha1
kind: Workload
metadata: {{name: client, namespace: prod, labels: {{app: client}}}}
spec: {{cgroup: $ROOT/prod/client}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: client, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: client}}}}
  policyTypes: [Egress]
  egress:
{egress}"#
    )
}
