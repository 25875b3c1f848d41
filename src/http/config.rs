//! `[serve]` and `[cors]`: how downloads are answered and who may reach them cross-origin.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How file downloads are answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Verify, then let nginx send the file (`X-Accel-Redirect`).
    pub nginx_accel: bool,
    /// nginx `internal` location aliasing `<data_dir>/blobs/` (falling back to
    /// `<archive.root>/blobs/` for archived blobs, see nginx/media-store.conf).
    pub accel_prefix: String,
    /// Unix socket served besides `listen` (for nginx on the same host); empty: none.
    pub unix_socket: PathBuf,
    /// Permission bits of `unix_socket` (connecting needs write permission).
    pub unix_socket_mode: u32,
    /// Group given the socket file (e.g. nginx's `www-data`, with mode 0o660);
    /// empty: the daemon's own group.
    pub unix_socket_group: String,
}

/// Cross-origin access to downloads and presigned uploads (never to the service API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Exact origins (`https://chat.example.org`) or `*`; empty disables CORS.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub max_age_secs: u64,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            nginx_accel: false,
            accel_prefix: "/_blobs/".into(),
            unix_socket: PathBuf::new(),
            unix_socket_mode: 0o660,
            unix_socket_group: String::new(),
        }
    }
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}
