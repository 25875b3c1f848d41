//! Waiting for something to happen: polling with a deadline, never a bare
//! sleep that hopes the other side was quick enough.

use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(5);

/// Polls `done` until it holds; panics after `limit`, naming `what`.
pub async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what} in vain"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for plain threads (Drop, blocking helpers): false on timeout.
pub fn poll_blocking(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; `None`
/// if it is still running then.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let mut status = None;
    poll_blocking(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// A loopback port that was free a moment ago (callers retry if it is taken meanwhile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
