#![no_std]
//! Exists so that `egress-agent` can name this crate as a build-dependency
//! (cargo ignores dependencies without a library target); aya-build rebuilds
//! the binary when it changes.
