//! The whole policy loader, from a file's bytes to the compiled plan: the
//! path every policy file takes in `egress-agent check` and in the running
//! agent (`egress_policy::load` → `compile::compile`). Any panic is a bug: a bad
//! file must become diagnostics, never a crash of the agent.
//!
//! The input is one file. Cross-object checks (selectors, workloads,
//! gateways) are reached through multi-document inputs: the seed corpus
//! has the shipped policy set joined into one file (fuzz/seeds/loader).
//! Loading it next to fixed companion files was tried and halved the
//! executions per second for no coverage the joined seed lacks.

#![no_main]

use egress_agent::compile::compile;
use egress_policy::{self, Source};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As `source::read` does: a file that is not UTF-8 is a diagnostic
    // before the YAML parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match egress_policy::load_sources(&[Source::new("fuzz.yaml", text)]) {
        Ok(loaded) => {
            // Rendering a warning walks to its location.
            for warning in &loaded.warnings {
                let _ = warning.to_string();
            }
            let plan = compile(&loaded.model);
            let _ = serde_json::to_vec(&plan).expect("a plan always serializes");
        }
        Err(rejected) => {
            let _ = rejected.to_string();
            for diagnostic in &rejected.diagnostics {
                let _ = diagnostic.to_string();
            }
        }
    }
});
