//! Running blocking work (SQLite, file I/O) off the async executor.

use tokio::task::JoinHandle;

/// `spawn_blocking` that keeps the caller's tracing span, so log lines from the
/// blocking closure stay attached to the request that caused them. The work
/// starts at once (not when the handle is first polled), so callers can overlap
/// it with their own async work.
pub fn blocking<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
}
