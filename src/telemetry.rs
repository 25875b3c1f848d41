//! Logs and metrics set-up: the tracing subscriber, and one process-wide
//! Prometheus recorder. Defines no domain metrics; modules own theirs (e.g.
//! `mirror::metric`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Logs to stderr with `filter` (tracing's EnvFilter syntax), unless
/// `MEDIA_STORE_LOG_FILTER` says otherwise.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDIA_STORE_LOG_FILTER")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first call (later calls return the same handle).
/// `None` if another global recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}
