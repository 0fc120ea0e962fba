//! The programs' aya-log records, as `tracing` events of target `ebpf`, so
//! that they go wherever the agent's own logs go (text or JSON).

use std::io;

use aya_log::EbpfLogger;
use tokio::io::{unix::AsyncFd, Interest};
use tracing::{debug, error, info, trace, warn};

/// A `log::Log` that re-emits each record through `tracing`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => error!(target: "ebpf", "{message}"),
            log::Level::Warn => warn!(target: "ebpf", "{message}"),
            log::Level::Info => info!(target: "ebpf", "{message}"),
            log::Level::Debug => debug!(target: "ebpf", "{message}"),
            log::Level::Trace => trace!(target: "ebpf", "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Forwards records until the ring's descriptor fails; each wake-up drains
/// what the programs wrote.
pub async fn forward(logger: EbpfLogger<ToTracing>) -> io::Result<()> {
    // SAFETY: the logger owns its ring's descriptor, which stays open and
    // the same for as long as the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(io::Error::from)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
