//! Logs and metrics set-up: the tracing subscriber, and one process-wide
//! Prometheus recorder. Defines no domain metrics; modules own theirs (e.g.
//! `mirror::metric`).

use std::io::IsTerminal as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

/// `log_format`: how log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON lines under systemd (`JOURNAL_STREAM` set), else text; colour
    /// only when stderr is a terminal.
    #[default]
    Auto,
    /// Human-readable lines (coloured only on a terminal).
    Text,
    /// One JSON object a line.
    Json,
}

/// What [`init_tracing`] writes, decided from the configured format and where
/// stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutput {
    Json,
    Text { ansi: bool },
}

impl LogFormat {
    /// `journal`: stderr is systemd's journal stream; `terminal`: stderr is a tty.
    pub fn output(self, journal: bool, terminal: bool) -> LogOutput {
        match self {
            LogFormat::Json => LogOutput::Json,
            LogFormat::Auto if journal && !terminal => LogOutput::Json,
            LogFormat::Auto | LogFormat::Text => LogOutput::Text { ansi: terminal },
        }
    }
}

/// Logs to stderr with `filter` (tracing's EnvFilter syntax), unless
/// `MEDIA_STORE_LOG_FILTER` says otherwise, in `format`.
pub fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEDIA_STORE_LOG_FILTER")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let terminal = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format.output(journal, terminal) {
        LogOutput::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogOutput::Text { ansi } => builder.with_ansi(ansi).try_init(),
    };
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Buckets (seconds) of the latency histograms: from a cached download
/// (sub-millisecond) to a multi-gigabyte upload or a GC run.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Buckets of the index writer's batch sizes (jobs per commit).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the recorder on first call (later calls return the same handle).
/// `None` if another global recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            // Histograms with buckets for the metrics named here; the others
            // (e.g. the mirror's lag) stay summaries, as they were shipped.
            let mut builder = PrometheusBuilder::new();
            for name in [
                "media_store_http_request_duration_seconds",
                "media_store_index_writer_commit_seconds",
                "media_store_gc_run_seconds",
                "media_store_maintenance_write_lock_held_seconds",
            ] {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.into()), SECONDS_BUCKETS)
                    .ok()?;
            }
            builder
                .set_buckets_for_metric(
                    Matcher::Full("media_store_index_writer_batch_size".into()),
                    BATCH_BUCKETS,
                )
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_json_under_the_journal() {
        use LogOutput::*;
        // A file or a pipe: no colour codes.
        assert_eq!(LogFormat::Auto.output(false, false), Text { ansi: false });
        assert_eq!(LogFormat::Text.output(false, false), Text { ansi: false });
        assert_eq!(LogFormat::Auto.output(false, true), Text { ansi: true });
        // systemd's journal: JSON by default, text when asked, never colour.
        assert_eq!(LogFormat::Auto.output(true, false), Json);
        assert_eq!(LogFormat::Text.output(true, false), Text { ansi: false });
        assert_eq!(LogFormat::Json.output(false, true), Json);
    }
}
