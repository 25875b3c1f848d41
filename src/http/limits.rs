//! Admission limits (`[limits]`): open connections, uploads in progress, and
//! per-uploader upload rates. Over a limit the answer is quick and explicit
//! (`503`/`429` with `Retry-After`); nothing waits in a queue.
//!
//! Counters are plain atomics read against the running settings, so every
//! limit follows a config reload without rebuilding anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{Extensions, StatusCode};

use super::config::LimitsConfig;
use super::error::ApiError;
use super::metric;
use super::observe::RequestStats;

/// The daemon's admission state; one per [`super::HttpState`].
#[derive(Default)]
pub struct Limits {
    connections: Arc<AtomicUsize>,
    uploads: Arc<AtomicUsize>,
    buckets: Mutex<HashMap<i64, Bucket>>,
}

/// An admitted connection; the count goes down when it is dropped.
pub struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(metric::OPEN_CONNECTIONS).decrement(1.0);
    }
}

/// An admitted upload; the count goes down when it is dropped.
pub struct UploadGuard(Arc<AtomicUsize>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(metric::UPLOADS_IN_PROGRESS).decrement(1.0);
    }
}

/// A token bucket: `tokens` refill at `uploads_per_minute` up to the burst.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets untouched for this long are full again and can be forgotten.
const BUCKET_IDLE: Duration = Duration::from_secs(600);

impl Limits {
    /// Admits one more connection, or `None` at `max_connections`.
    pub fn open_connection(&self, max: usize) -> Option<ConnectionGuard> {
        if !admit(&self.connections, max) {
            metrics::counter!(metric::REJECTED, "limit" => "connections").increment(1);
            return None;
        }
        metrics::gauge!(metric::OPEN_CONNECTIONS).increment(1.0);
        Some(ConnectionGuard(self.connections.clone()))
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Admits an upload by `uploader_id`: first its rate, then the number of
    /// uploads in progress. The guard is held while the body is received.
    /// A refusal's `Retry-After` goes to the request's [`RequestStats`] (in
    /// `extensions`), from which the response gets it.
    pub fn admit_upload(
        &self,
        uploader_id: i64,
        config: &LimitsConfig,
        extensions: &Extensions,
    ) -> Result<UploadGuard, ApiError> {
        let retry = |secs: u64| {
            if let Some(stats) = extensions.get::<Arc<RequestStats>>() {
                stats.retry_after.store(secs.max(1), Ordering::Relaxed);
            }
        };
        if config.uploads_per_minute > 0
            && let Err(wait) = self.take_token(uploader_id, config, Instant::now())
        {
            metrics::counter!(metric::REJECTED, "limit" => "upload_rate").increment(1);
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "rate_limited",
                message: format!(
                    "uploader {uploader_id} started more than {} uploads a minute; retry in {} s",
                    config.uploads_per_minute,
                    wait.as_secs().max(1)
                ),
            })
            .inspect_err(|_| retry(wait.as_secs()));
        }
        if !admit(&self.uploads, config.max_concurrent_uploads) {
            metrics::counter!(metric::REJECTED, "limit" => "uploads").increment(1);
            return Err(ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "too_many_uploads",
                message: format!(
                    "{} uploads are in progress, the most allowed; retry shortly",
                    config.max_concurrent_uploads
                ),
            })
            .inspect_err(|_| retry(config.retry_after_secs));
        }
        metrics::gauge!(metric::UPLOADS_IN_PROGRESS).increment(1.0);
        Ok(UploadGuard(self.uploads.clone()))
    }

    /// Takes a token from the uploader's bucket, or says how long until one is there.
    fn take_token(
        &self,
        uploader_id: i64,
        config: &LimitsConfig,
        now: Instant,
    ) -> Result<(), Duration> {
        let rate = f64::from(config.uploads_per_minute) / 60.0;
        let burst = f64::from(if config.upload_burst == 0 {
            config.uploads_per_minute
        } else {
            config.upload_burst
        });
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            buckets.retain(|_, b| now.duration_since(b.at) < BUCKET_IDLE);
        }
        let bucket = buckets.entry(uploader_id).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate).max(Duration::from_secs(1)))
        }
    }
}

/// Makes every refusal counter appear at 0 before its first event (dashboards
/// then show a rate of 0, not "no data").
pub fn register_metrics() {
    for limit in ["connections", "uploads", "upload_rate", "body_timeout"] {
        metrics::counter!(metric::REJECTED, "limit" => limit).increment(0);
    }
    metrics::gauge!(metric::OPEN_CONNECTIONS).increment(0.0);
    metrics::gauge!(metric::UPLOADS_IN_PROGRESS).increment(0.0);
}

/// Increments `count` unless it is at `max`.
fn admit(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// The bytes sent to a connection over `max_connections` before it is closed:
/// a complete `503` (hyper is not involved; the request is never read).
pub fn connection_refused_response(retry_after_secs: u64) -> Vec<u8> {
    let body = r#"{"error":{"code":"too_many_connections","message":"the server has as many connections open as it allows; retry shortly"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: {retry_after_secs}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_configured_rate() {
        let limits = Limits::default();
        let config = LimitsConfig {
            uploads_per_minute: 60,
            upload_burst: 2,
            ..LimitsConfig::default()
        };
        let t0 = Instant::now();
        assert!(limits.take_token(1, &config, t0).is_ok());
        assert!(limits.take_token(1, &config, t0).is_ok());
        let wait = limits.take_token(1, &config, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Another uploader has a bucket of its own.
        assert!(limits.take_token(2, &config, t0).is_ok());
        // One token a second comes back.
        assert!(
            limits
                .take_token(1, &config, t0 + Duration::from_millis(1100))
                .is_ok()
        );
        assert!(
            limits
                .take_token(1, &config, t0 + Duration::from_millis(1200))
                .is_err()
        );
    }

    #[test]
    fn counters_stop_at_their_maximum() {
        let limits = Limits::default();
        let a = limits.open_connection(2).unwrap();
        let _b = limits.open_connection(2).unwrap();
        assert!(limits.open_connection(2).is_none());
        drop(a);
        assert!(limits.open_connection(2).is_some());
    }
}
