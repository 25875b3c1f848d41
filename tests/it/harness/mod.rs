//! Shared test harness: start the daemon (in-process or as the real binary),
//! talk to it over real HTTP on 127.0.0.1, and inspect its data folder.

#![allow(dead_code)] // Each test module uses a different part of the harness.

pub mod daemon;
pub mod fixtures;
pub mod mariadb;
pub mod nginx;
pub mod powercut;

pub use daemon::{TestApp, TestDaemon};
pub use fixtures::*;

pub const TOKEN: &str = "test-token-0123456789";

/// Sends SIGTERM to `child` and waits up to `within` for it to exit; `None`
/// if it is still running then.
pub fn sigterm_and_wait(
    child: &mut std::process::Child,
    within: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    None
}
