//! Shared test harness: start the daemon (in-process or as the real binary),
//! talk to it over real HTTP on 127.0.0.1, and inspect its data folder.

#![allow(dead_code)] // Each test module uses a different part of the harness.

pub mod daemon;
pub mod fixtures;
pub mod mariadb;
pub mod nginx;

pub use daemon::{TestApp, TestDaemon};
pub use fixtures::*;

pub const TOKEN: &str = "test-token-0123456789";
