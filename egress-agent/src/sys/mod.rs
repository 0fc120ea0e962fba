//! Host facts the agent depends on: cgroup2 and bpffs mounts.
