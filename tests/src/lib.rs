//! Fixtures for privileged tests: network namespaces, cgroups, listeners.
