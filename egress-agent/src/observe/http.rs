//! `--metrics-addr`: `/metrics` (Prometheus text), `/healthz` (the agent
//! answers) and `/readyz` (a policy generation is in force).

use std::net::SocketAddr;

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::get, Router};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::Query;

#[derive(Clone)]
struct Ctx {
    queries: mpsc::Sender<Query>,
    ready: watch::Receiver<bool>,
}

/// Serves in the background on `listener`, bound (non-blocking) by the
/// start's input checks, so that a bad address fails the start before
/// anything is attached.
pub fn start(
    listener: std::net::TcpListener,
    queries: mpsc::Sender<Query>,
    ready: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx { queries, ready });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    let (tx, rx) = oneshot::channel();
    let text = match ctx.queries.send(Query::Metrics(tx)).await {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    match text {
        Some(text) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

async fn readyz(State(ctx): State<Ctx>) -> impl IntoResponse {
    if *ctx.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no policy in force yet\n")
    }
}
