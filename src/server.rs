//! Serving: the router on a bound listener until shutdown, then a drain.

use std::future::Future;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

use crate::app::AppState;

/// Serves `state` on `listener` until `shutdown` completes, then stops accepting
/// and waits for in-flight requests to finish. Tests bind port 0 and pass their
/// own shutdown future; the daemon passes SIGTERM/SIGINT.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Small responses must not wait for delayed ACKs (Nagle): set TCP_NODELAY.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, crate::http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives between
/// start-up (e.g. sd-notify READY) and the first poll is then not lost.
pub fn termination_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining in-flight requests"),
            _ = int.recv() => tracing::info!("SIGINT: draining in-flight requests"),
        }
    }
}
