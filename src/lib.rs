//! media-store: a self-hosted, content-addressed media store daemon.
//!
//! # Architecture
//!
//! Dependencies point down only (checked by `tests/it/architecture.rs`):
//!
//! ```text
//! main -> cli                      clap subcommands; gc/fsck flags and exit codes (cli::lifecycle)
//!   -> app (composition root)      builds every concrete type from the config, wires them,
//!                                  applies reloads (app::reload), starts background GC
//!      config                      defaults <- TOML file <- MEDIA_STORE_* env <- flags; each
//!                                  module owns its section, config only layers and validates
//!   -> http                        routes, extractors, error mapping, HttpState, server
//!      lifecycle                   message references, retention, GC, archival, fsck
//!      mirror                      MySQL mirror of the index (outbox -> worker -> media_files),
//!                                  touching only rows it owns; `import` adopts the backend's rows
//!      media                       ingest/query/delete: the order of store and index operations
//!   -> index   (port)              SQLite: every SQL statement; writer with group commit,
//!                                  reader pool, Maintenance connection; no SQLite type in its API
//!      store   (port)              blob bytes: staging, install, durability, read, walk,
//!                                  verify, quarantine, delete, archive tier; no paths out;
//!                                  `external`: reads confined under a root (import sources)
//!      signing, policy, clock, timefmt, error, tasks, telemetry
//! ```
//!
//! The on-disk layout, the write protocol and every invariant the code relies on
//! are written in `storage-layout.md`; each module names the invariant it upholds.

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod http;
pub mod index;
pub mod lifecycle;
pub mod media;
pub mod mirror;
pub mod policy;
pub mod signing;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod timefmt;

pub use app::AppState;
pub use config::Config;
