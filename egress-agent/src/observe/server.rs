//! The agent's Unix socket: `events` and `status` for the CLI.
//!
//! Root only: the socket is created mode 0600 in a 0700 directory, since
//! events name every workload's destinations.

use std::{
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast::error::RecvError, mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{
    protocol::{ErrorReply, Request},
    EventHub, Query,
};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path` (replacing a stale socket: the pin-dir lock already makes
/// this the only agent for its maps) and serves it until the process ends.
pub fn start(path: &Path, hub: EventHub, queries: mpsc::Sender<Query>) -> Result<(), ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ServerError::Dir {
                path: dir.to_owned(),
                source,
            })?;
    }
    let bind = |source| ServerError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let (hub, queries) = (hub.clone(), queries.clone());
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, hub, queries).await {
                            debug!(error = %e, "agent socket client");
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "agent socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn serve(
    stream: UnixStream,
    hub: EventHub,
    queries: mpsc::Sender<Query>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    // A client that never sends its request does not hold a task forever.
    match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
        Ok(read) => read?,
        Err(_) => return Ok(()),
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let reply = ErrorReply {
                error: format!("bad request: {e}"),
            };
            return send(&mut write, &reply).await;
        }
    };
    match request {
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            let status = match queries.send(Query::Status(tx)).await {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            match status {
                Some(status) => send(&mut write, &status).await,
                None => {
                    let reply = ErrorReply {
                        error: "the agent is shutting down".into(),
                    };
                    send(&mut write, &reply).await
                }
            }
        }
        Request::Events { follow, filter } => {
            // Subscribe before reading the backlog, so nothing falls
            // between them (an event may then appear twice, never zero
            // times).
            let mut live = hub.subscribe();
            for event in hub.recent().iter().filter(|e| e.matches(&filter)) {
                send(&mut write, event).await?;
            }
            if !follow {
                return Ok(());
            }
            loop {
                match live.recv().await {
                    Ok(event) if event.matches(&filter) => send(&mut write, &event).await?,
                    Ok(_) => {}
                    Err(RecvError::Lagged(n)) => hub.lagged(n),
                    Err(RecvError::Closed) => return Ok(()),
                }
            }
        }
    }
}

async fn send<T: serde::Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}
