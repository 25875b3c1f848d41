//! Metrics exporter setup: one process-wide Prometheus recorder. Defines no
//! domain metrics; modules own theirs (e.g. `sync::metric`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder on first call (later calls return the same handle).
/// `None` if another global recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}
