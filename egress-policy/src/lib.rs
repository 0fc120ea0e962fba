//! Policy model: NetworkPolicy-style YAML → validated [`Model`].
//!
//! Loading never stops at the first problem: every file is read and every
//! object checked, and the result is either a model (with warnings) or a
//! [`Rejected`] carrying all findings, each naming file, object, field and
//! line.

pub mod apimachinery;
pub mod crd;
pub mod diagnostic;
pub mod model;
pub mod objects;
mod parse;
pub mod ports;
pub mod selector;
pub mod source;
pub mod status;
pub mod validate;
pub mod yaml11;
mod yaml_node;

use std::path::PathBuf;

pub use diagnostic::{Diagnostic, Rejected, Severity};
pub use model::Model;
pub use parse::ParseCache;
pub use source::Source;
pub use validate::{load_sources, load_sources_cached, Loaded};

/// Loads every `*.yaml` / `*.yml` under `paths` (files or directories).
pub fn load(paths: &[PathBuf]) -> Result<Loaded, Rejected> {
    load_with(paths, &[])
}

/// [`load`], plus sources that are already in memory (objects from the
/// Kubernetes API, written as YAML documents), validated together with the
/// files as one set: the same checks, the same model.
pub fn load_with(paths: &[PathBuf], extra: &[Source]) -> Result<Loaded, Rejected> {
    load_with_cached(paths, extra, &mut ParseCache::default())
}

/// [`load_with`], with the typed parses of unchanged documents taken from
/// `cache` (see [`ParseCache`]).
pub fn load_with_cached(
    paths: &[PathBuf],
    extra: &[Source],
    cache: &mut ParseCache,
) -> Result<Loaded, Rejected> {
    let files = source::discover(paths).map_err(|d| Rejected {
        diagnostics: vec![*d],
    })?;
    let (sources, unreadable) = source::read(&files);
    if !unreadable.is_empty() {
        return Err(Rejected {
            diagnostics: unreadable,
        });
    }
    let mut sources = sources;
    sources.extend_from_slice(extra);
    if sources.is_empty() {
        let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(Rejected {
            diagnostics: vec![Diagnostic::error(
                &diagnostic::file_name(paths.first().map_or(&PathBuf::new(), |p| p)),
                format!("no *.yaml or *.yml files in {}", shown.join(", ")),
            )],
        });
    }
    load_sources_cached(&sources, cache)
}
