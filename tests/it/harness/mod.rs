//! Shared test harness: start the daemon (in-process or as the real binary),
//! talk to it over real HTTP on 127.0.0.1, and inspect its data folder.
//! Each daemon handle runs the consistency oracle when it goes away
//! (`teardown`).

#![allow(dead_code)] // Each test module uses a different part of the harness.

pub mod cli;
pub mod daemon;
pub mod fixtures;
pub mod garage;
pub mod http;
pub mod mariadb;
pub mod nginx;
pub mod powercut;
pub mod slowproxy;
pub mod teardown;
pub mod wait;

pub use cli::*;
pub use daemon::{TestApp, TestDaemon};
pub use fixtures::*;
pub use http::*;
pub use wait::*;

pub const TOKEN: &str = "test-token-0123456789";
