//! media-store: a self-hosted, content-addressed media store daemon.
//!
//! # Architecture
//!
//! ```text
//! http (routes, extractors, error mapping)      thin: parse -> call media:: -> serialize
//!   └─ media (ingest, query, delete)            the only module that combines store + index
//!        ├─ policy   allowed types and sizes, magic-byte sniffing (pure)
//!        ├─ store    blob files: staging, atomic install, layout (never opens SQLite)
//!        └─ index    SQLite: one writer thread with group commit + reader pool (never opens blob files)
//! config   defaults <- TOML file <- MEDIA_STORE_* env <- CLI flags
//! server   run(listener, state, shutdown): serves until shutdown, then drains
//! cli      clap subcommands
//! sync     MySQL mirror of the index: outbox (SQLite triggers) -> worker thread -> media_files
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
