//! What the HTTP layer needs from the rest of the program, as one cheap
//! handle. Built by the composition root (`app`), which also swaps its live
//! settings on a config reload; the HTTP layer itself never reads the config.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::config::{CorsConfig, LimitsConfig, MetricsConfig, ServeConfig};
use super::limits::Limits;
use super::routes::files::DownloadCache;
use crate::lifecycle::refs::References;
use crate::media::MediaService;
use crate::mirror::MysqlSync;
use crate::preview::PreviewService;
use crate::signing::Signer;

/// The settings routes read on every request; replaced whole on reload.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// The service token every `/v1` route requires.
    pub api_token: String,
    /// Prefix of `file_url` and signed URLs.
    pub public_base_url: String,
    pub serve: ServeConfig,
    pub cors: CorsConfig,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
}

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct HttpState(Arc<Inner>);

struct Inner {
    settings: ArcSwap<HttpSettings>,
    media: MediaService,
    previews: PreviewService,
    refs: References,
    mysql: Arc<MysqlSync>,
    /// Swapped whole on reload, so keys rotate without a restart.
    signer: ArcSwap<Signer>,
    /// Downloads looking up their row at once: as many as the index keeps read
    /// connections, so a burst waits here (async) instead of opening new
    /// SQLite connections on blocking threads.
    download_slots: tokio::sync::Semaphore,
    download_cache: DownloadCache,
    limits: Limits,
}

impl HttpState {
    pub fn new(
        settings: HttpSettings,
        media: MediaService,
        previews: PreviewService,
        refs: References,
        mysql: Arc<MysqlSync>,
        signer: Signer,
        download_slots: usize,
    ) -> HttpState {
        super::limits::register_metrics();
        HttpState(Arc::new(Inner {
            settings: ArcSwap::from_pointee(settings),
            media,
            previews,
            refs,
            mysql,
            signer: ArcSwap::from_pointee(signer),
            download_slots: tokio::sync::Semaphore::new(download_slots),
            download_cache: DownloadCache::default(),
            limits: Limits::default(),
        }))
    }

    /// The running settings (a snapshot: a reload does not change it under you).
    pub fn settings(&self) -> Arc<HttpSettings> {
        self.0.settings.load_full()
    }

    pub fn set_settings(&self, settings: HttpSettings) {
        self.0.settings.store(Arc::new(settings));
    }

    pub fn set_signer(&self, signer: Signer) {
        self.0.signer.store(Arc::new(signer));
    }

    pub fn media(&self) -> &MediaService {
        &self.0.media
    }

    /// Renditions and upload metadata.
    pub fn previews(&self) -> &PreviewService {
        &self.0.previews
    }

    pub fn refs(&self) -> &References {
        &self.0.refs
    }

    pub fn mysql(&self) -> &MysqlSync {
        &self.0.mysql
    }

    pub fn api_token(&self) -> String {
        self.0.settings.load().api_token.clone()
    }

    /// The URL signer of the running config.
    pub fn signer(&self) -> Arc<Signer> {
        self.0.signer.load_full()
    }

    /// Refreshes the gauges read at scrape time (stored blobs and bytes).
    pub async fn observe_gauges(&self) {
        if let Err(e) = self.0.media.observe_stored().await {
            tracing::warn!(error = %e, "cannot read the stored-blob totals for /metrics");
        }
        if let Err(e) = self.0.refs.observe_runs().await {
            tracing::warn!(error = %e, "cannot read the lifecycle runs for /metrics");
        }
    }

    /// Admission counters checked against `settings().limits`.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    pub fn download_cache(&self) -> &DownloadCache {
        &self.0.download_cache
    }

    pub fn download_slots(&self) -> &tokio::sync::Semaphore {
        &self.0.download_slots
    }

    pub fn public_base_url(&self) -> String {
        self.0.settings.load().public_base_url.clone()
    }
}
