//! The lensd server: REST v1 and v2, the WebSocket protocol, access control, limits, metrics
//! and persistence, over the scheduler and residency actors. Never touches tensors.

pub mod api;
pub mod auth;
pub mod conn;
pub mod error;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod original;
pub mod protocol;
pub mod reqlog;
pub mod roles;
pub mod share;
pub mod state;
pub mod store;
pub mod tracker;
pub mod views;
pub mod web;
pub mod ws;

pub use state::{AppState, Control, Parts, Phase, Shared};

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Serves `state` on `listener` until `signal` resolves, then shuts down in order: no new work
/// is accepted and connected clients are told; running and queued work may finish within the
/// grace period; what remains is cancelled (each request ends with its `cancelled` event and
/// is stored); then connections close, and this returns once the WebSocket sessions have
/// ended too (at most [`SESSIONS_CLOSE`] after the rest).
pub async fn serve(
    state: Shared,
    listener: tokio::net::TcpListener,
    signal: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = api::router(state.clone());
    let draining = state.clone();
    tokio::spawn(async move {
        signal.await;
        drain(&draining).await;
    });
    conn::accept(state.clone(), listener, app).await;
    // A WebSocket session leaves its HTTP connection at the upgrade, so `accept` does not wait
    // for it: without this wait a server with no work left could end its process before a
    // session had written `server_shutdown` to its client.
    let end = tokio::time::Instant::now() + SESSIONS_CLOSE;
    while state.connections.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// How long [`serve`] waits for WebSocket sessions to write their last frames and close.
pub const SESSIONS_CLOSE: Duration = Duration::from_secs(3);

/// Why work still running when the grace period ends was cancelled.
pub const SHUTDOWN_REASON: &str = "the server is shutting down";

/// The shutdown sequence up to closing connections.
pub async fn drain(state: &Shared) {
    state.closing.store(true, Ordering::SeqCst);
    let _ = state.shutdown.send(Phase::Draining);
    let grace = state.limits.shutdown_grace;
    tracing::info!(
        ?grace,
        active = state.requests.active().len(),
        "shutting down"
    );
    let deadline = tokio::time::Instant::now() + grace;
    let tick = Duration::from_millis(100);
    while !state.requests.active().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(tick).await;
    }
    let left = state.requests.active();
    if !left.is_empty() {
        tracing::info!(
            count = left.len(),
            "cancelling work still running after the grace period"
        );
        for t in &left {
            state
                .scheduler
                .cancel_because(t.internal, SHUTDOWN_REASON)
                .await;
        }
        // Each ends at its next sub-batch; give them a bounded time to report and be stored.
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while !state.requests.active().is_empty() && tokio::time::Instant::now() < end {
            tokio::time::sleep(tick).await;
        }
    }
    let _ = state.shutdown.send(Phase::Closing);
}
