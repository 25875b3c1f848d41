//! `[serve]` and `[cors]`: how downloads are answered and who may reach them cross-origin.

use std::path::PathBuf;
use std::time::Duration;

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
    /// With the S3 backend: answer a checked download with `302` to a
    /// presigned GET of the object (valid `s3_redirect_ttl_secs` at most),
    /// so the bytes flow from the cluster, not through the daemon. The
    /// client must reach the S3 endpoint; the daemon does not verify those
    /// bytes (the scrub does).
    pub s3_redirect: bool,
    pub s3_redirect_ttl_secs: u64,
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
            s3_redirect: false,
            s3_redirect_ttl_secs: 300,
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

/// `[limits]`: what one client, or many, may hold of the daemon. Over a limit
/// the answer is `429` or `503` with `Retry-After`, never a stall. Every key
/// applies live (to connections accepted after a reload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Time a client has to send a request's headers, and the longest a
    /// keep-alive connection may stay idle between requests.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body; past it the request
    /// fails (`408 body_timeout`) and its connection is closed.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open client connections (TCP and Unix socket together); one more is
    /// answered `503 too_many_connections` and closed.
    pub max_connections: usize,
    /// Uploads being received at once; one more is answered `503 too_many_uploads`.
    pub max_concurrent_uploads: usize,
    /// Uploads each uploader may start per minute (0: no limit); over it
    /// `429 rate_limited`.
    pub uploads_per_minute: u32,
    /// Uploads an uploader may start at once before `uploads_per_minute`
    /// applies (0: as many as `uploads_per_minute`).
    pub upload_burst: u32,
    /// `Retry-After` seconds sent with 503 answers of these limits.
    pub retry_after_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 8192,
            max_concurrent_uploads: 256,
            uploads_per_minute: 0,
            upload_burst: 0,
            retry_after_secs: 1,
        }
    }
}

/// `[metrics]`: who may read `GET /metrics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `/metrics` needs `Authorization: Bearer <token>` (this token,
    /// not the service token); empty: no token.
    pub token: String,
    /// Only answer `/metrics` to clients on the loopback interface (TCP from
    /// 127.0.0.0/8 or ::1); others, and the Unix socket nginx uses, get 404.
    pub loopback_only: bool,
}
