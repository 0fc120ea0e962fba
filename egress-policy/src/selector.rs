//! Label selectors with Kubernetes semantics.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Labels of a namespace or workload.
pub type Labels = BTreeMap<String, String>;

/// One requirement of a label selector; a selector ANDs them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "operator", rename_all = "PascalCase")]
pub enum Requirement {
    /// From `matchLabels`: the label is present with exactly this value.
    Equals {
        key: String,
        value: String,
    },
    In {
        key: String,
        values: BTreeSet<String>,
    },
    NotIn {
        key: String,
        values: BTreeSet<String>,
    },
    Exists {
        key: String,
    },
    DoesNotExist {
        key: String,
    },
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::Equals { key, value } => labels.get(key) == Some(value),
            Self::In { key, values } => labels.get(key).is_some_and(|v| values.contains(v)),
            // As in Kubernetes: a missing key satisfies NotIn.
            Self::NotIn { key, values } => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists { key } => labels.contains_key(key),
            Self::DoesNotExist { key } => !labels.contains_key(key),
        }
    }
}

/// A validated label selector. No requirements (`{}`) selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    pub fn everything() -> Self {
        Self(Vec::new())
    }

    pub fn new(requirements: Vec<Requirement>) -> Self {
        Self(requirements)
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    pub fn is_everything(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r {
                Requirement::Equals { key, value } => format!("{key}={value}"),
                Requirement::In { key, values } => format!("{key} in ({})", join(values)),
                Requirement::NotIn { key, values } => format!("{key} notin ({})", join(values)),
                Requirement::Exists { key } => key.clone(),
                Requirement::DoesNotExist { key } => format!("!{key}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

fn join(values: &BTreeSet<String>) -> String {
    values.iter().cloned().collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn set(values: &[&str]) -> BTreeSet<String> {
        values.iter().map(|v| (*v).into()).collect()
    }

    #[test]
    fn operators_follow_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let key = || "app".to_owned();
        assert!(Requirement::In {
            key: key(),
            values: set(&["web", "db"])
        }
        .matches(&l));
        assert!(!Requirement::NotIn {
            key: key(),
            values: set(&["web"])
        }
        .matches(&l));
        assert!(Requirement::NotIn {
            key: "missing".into(),
            values: set(&["x"])
        }
        .matches(&l));
        assert!(Requirement::Exists { key: key() }.matches(&l));
        assert!(Requirement::DoesNotExist {
            key: "missing".into()
        }
        .matches(&l));
        assert!(!Requirement::In {
            key: "missing".into(),
            values: set(&["x"])
        }
        .matches(&l));
        assert!(Selector::everything().matches(&Labels::new()));
    }
}
