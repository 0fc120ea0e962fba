//! Compiler: validated model → per-workload plan.
