//! Error formatting shared by the long-running parts (the agent loop and
//! the Kubernetes watch), kept here so neither has to import the other.

/// An error and its sources, on one line.
pub fn format_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
