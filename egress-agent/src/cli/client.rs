//! The client side of the agent socket (see `observe::protocol`).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::Context as _;
use egress_agent::observe::protocol::Request;

/// Sends `request` and returns the reply, one JSON line at a time.
pub fn ask(
    socket: &Path,
    request: &Request,
) -> anyhow::Result<impl Iterator<Item = std::io::Result<String>>> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent at {} (is `egress-agent run` running, with this --socket, and are you root?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).context("sending the request")?;
    Ok(BufReader::new(stream).lines())
}

/// The agent's `{"error": ...}` reply, if `line` is one.
pub fn error_of(line: &str) -> Option<String> {
    serde_json::from_str::<egress_agent::observe::protocol::ErrorReply>(line)
        .ok()
        .map(|e| e.error)
}
