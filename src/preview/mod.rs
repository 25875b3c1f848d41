//! Renditions (previews, thumbnails) and layout metadata of stored media
//! (issue #11), on top of the `media_preview` engine.
//!
//! A rendition is an ordinary blob (storage-layout.md, "Renditions"): it is
//! rendered on first request (or eagerly after upload for variants configured
//! so), staged, synced and installed under the index writer with the upload's
//! durability barrier, and recorded in the `renditions` table against its
//! SOURCE blob's hash and variant, so identical content uploaded twice is
//! rendered once. Requests for the same (source, variant) at the same moment
//! share one render (single flight); renders and probes run on a bounded pool
//! of blocking threads (`preview.workers` permits), so they cannot take every
//! core from uploads and downloads; a failed render is remembered for
//! `preview.failure_ttl` so a hostile file is not decoded again on every
//! request.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};

use crate::clock::SharedClock;
use crate::error::{Classify, ErrorKind};
use crate::index::renditions::RenditionBlob;
use crate::index::{Index, IndexError, Layout, MediaRow};
use crate::media::Held;
use crate::store::{BlobStore, StagingFile, StoreError};

pub use media_preview::{Fit, OutputFormat, VariantSpec};

/// Metric names (Prometheus text on `GET /metrics`).
pub mod metric {
    /// Renders run (counter; label `variant`). One per (content, variant)
    /// however many clients asked at once.
    pub const RENDERS: &str = "media_store_renditions_rendered_total";
    /// Renders that failed (counter; label `code`, the engine's error code).
    pub const RENDER_FAILURES: &str = "media_store_rendition_failures_total";
    /// Render time (histogram, seconds).
    pub const RENDER_SECONDS: &str = "media_store_rendition_render_seconds";
    /// Probes of uploads for width, height, duration and ThumbHash (counter).
    pub const PROBES: &str = "media_store_media_probed_total";
    /// Probe time (histogram, seconds).
    pub const PROBE_SECONDS: &str = "media_store_media_probe_seconds";
    /// Renders and probes waiting for a worker (`preview.workers`) (gauge).
    pub const JOBS_QUEUED: &str = "media_store_preview_jobs_queued";
    /// Renders and probes holding a worker (gauge).
    pub const JOBS_RUNNING: &str = "media_store_preview_jobs_running";
}

/// A worker slot (`preview.workers`), counted in [`metric::JOBS_RUNNING`]
/// until dropped.
struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(metric::JOBS_RUNNING).decrement(1.0);
    }
}

/// A job waiting for a slot, counted in [`metric::JOBS_QUEUED`] until dropped
/// (also when its waiting is cancelled).
struct Queued;

impl Queued {
    fn new() -> Queued {
        metrics::gauge!(metric::JOBS_QUEUED).increment(1.0);
        Queued
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        metrics::gauge!(metric::JOBS_QUEUED).decrement(1.0);
    }
}

/// `[preview]`: renditions and upload metadata.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PreviewConfig {
    /// The variants clients may ask for by name (besides `original`).
    pub variants: BTreeMap<String, VariantConfig>,
    /// Renders and probes running at once; 0 = the number of cores. Restart.
    pub workers: usize,
    /// How long a failed render is remembered (not retried), e.g. `"60s"`.
    #[serde(with = "humantime_serde")]
    pub failure_ttl: Duration,
    /// How long ffmpeg/ffprobe/pdftoppm may run for one file.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest picture decoded at all, in pixels (decompression bombs).
    pub max_pixels: u64,
    /// Probe uploads for width, height, duration and ThumbHash.
    pub probe: bool,
}

/// One named variant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    /// `within` (fit inside width×height, keeping the aspect ratio) or
    /// `cover` (centre crop to exactly width×height).
    pub fit: String,
    pub width: u32,
    pub height: u32,
    /// `webp` (lossy, default) or `jpeg`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Encoder quality, 1–100.
    pub quality: u8,
    /// Render right after upload instead of on first request.
    #[serde(default)]
    pub eager: bool,
}

fn default_format() -> String {
    "webp".into()
}

impl Default for PreviewConfig {
    fn default() -> Self {
        let variant = |fit: &str, w, h, quality, eager| VariantConfig {
            fit: fit.into(),
            width: w,
            height: h,
            format: "webp".into(),
            quality,
            eager,
        };
        PreviewConfig {
            variants: BTreeMap::from([
                ("thumb".to_string(), variant("within", 320, 320, 80, false)),
                (
                    "preview".to_string(),
                    variant("within", 1280, 1280, 82, false),
                ),
                ("avatar".to_string(), variant("cover", 96, 96, 85, false)),
            ]),
            workers: 0,
            failure_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(20),
            max_pixels: 50_000_000,
            probe: true,
        }
    }
}

impl VariantConfig {
    pub fn spec(&self) -> Result<VariantSpec, String> {
        let (w, h) = (self.width, self.height);
        if w == 0 || h == 0 || w > 8192 || h > 8192 {
            return Err(format!("size {w}x{h} must be within 1..=8192"));
        }
        let fit = match self.fit.as_str() {
            "within" => Fit::Within { w, h },
            "cover" => Fit::Cover { w, h },
            other => return Err(format!("fit {other:?} is not `within` or `cover`")),
        };
        let format = match self.format.as_str() {
            "webp" => OutputFormat::WebP,
            "jpeg" => OutputFormat::Jpeg,
            other => return Err(format!("format {other:?} is not `webp` or `jpeg`")),
        };
        if !(1..=100).contains(&self.quality) {
            return Err(format!("quality {} is not within 1..=100", self.quality));
        }
        Ok(VariantSpec {
            fit,
            format,
            quality: self.quality,
        })
    }
}

impl PreviewConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in &self.variants {
            if name == "original" || name.is_empty() || name.len() > 32 {
                return Err(format!("preview.variants: {name:?} is not a usable name"));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "preview.variants: {name:?} may only hold letters, digits, `_` and `-`"
                ));
            }
            v.spec()
                .map_err(|e| format!("preview.variants.{name}: {e}"))?;
        }
        if self.max_pixels == 0 {
            return Err("preview.max_pixels must be positive".into());
        }
        Ok(())
    }

    /// Renders and probes at once: `workers`, or the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        }
    }

    fn limits(&self) -> media_preview::Limits {
        media_preview::Limits {
            max_pixels: self.max_pixels,
            timeout: self.timeout,
            ..Default::default()
        }
    }
}

/// Identifies a spec: a rendition recorded under another one is stale.
pub fn fingerprint(spec: &VariantSpec) -> String {
    let fit = match spec.fit {
        Fit::Within { w, h } => format!("within:{w}x{h}"),
        Fit::Cover { w, h } => format!("cover:{w}x{h}"),
    };
    let format = match spec.format {
        OutputFormat::WebP => "webp",
        OutputFormat::Jpeg => "jpeg",
    };
    format!("v1:{fit}:{format}:q{}", spec.quality)
}

/// Why a rendition cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PreviewError {
    /// The variant is not configured.
    #[error("no variant {0:?} of this media")]
    UnknownVariant(String),
    /// The engine refused or failed (its code and kind are kept; a failure
    /// remembered in the negative cache comes back as this too).
    #[error("{message}")]
    Engine {
        code: &'static str,
        kind: media_preview::ErrorKind,
        message: String,
    },
    /// The source content was collected while rendering.
    #[error("the media's content is gone")]
    SourceGone,
    /// Storing or recording the rendition failed.
    #[error("{0}")]
    Storage(String),
}

impl PreviewError {
    fn engine(e: &media_preview::PreviewError) -> Self {
        PreviewError::Engine {
            code: e.code(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// Seconds a client should wait before asking again (engine timeouts).
    pub fn retry_after(&self) -> Option<u64> {
        matches!(
            self,
            PreviewError::Engine {
                kind: media_preview::ErrorKind::Timeout,
                ..
            }
        )
        .then_some(30)
    }
}

impl From<IndexError> for PreviewError {
    fn from(e: IndexError) -> Self {
        PreviewError::Storage(e.to_string())
    }
}

impl From<StoreError> for PreviewError {
    fn from(e: StoreError) -> Self {
        PreviewError::Storage(e.to_string())
    }
}

impl Classify for PreviewError {
    fn kind(&self) -> ErrorKind {
        use media_preview::ErrorKind as K;
        match self {
            PreviewError::UnknownVariant(_) | PreviewError::SourceGone => ErrorKind::NotFound,
            PreviewError::Engine { kind, .. } => match kind {
                K::TooLarge | K::InvalidInput | K::Unsupported => ErrorKind::Unprocessable,
                K::NotAvailable => ErrorKind::NotFound,
                K::Timeout => ErrorKind::Unavailable,
                K::Internal => ErrorKind::Internal,
            },
            PreviewError::Storage(_) => ErrorKind::Internal,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            PreviewError::UnknownVariant(_) => "variant_not_found",
            PreviewError::SourceGone => "media_not_found",
            PreviewError::Engine {
                kind: media_preview::ErrorKind::Internal,
                ..
            } => "internal",
            PreviewError::Engine { code, .. } => code,
            PreviewError::Storage(_) => "internal",
        }
    }
}

/// What serves a variant of a media.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The original itself (`UseOriginal`: it is already small enough).
    Original,
    /// A rendition blob.
    Blob(RenditionBlob),
}

type Key = (blake3::Hash, String);
type Flight = Arc<OnceCell<Result<Resolved, PreviewError>>>;

/// Cheap to clone.
#[derive(Clone)]
pub struct PreviewService(Arc<Inner>);

struct Inner {
    store: BlobStore,
    index: Index,
    clock: SharedClock,
    config: ArcSwap<PreviewConfig>,
    /// Renders and probes at once.
    workers: Arc<Semaphore>,
    /// The threads they run on, at a lower CPU priority than the daemon's
    /// other threads, so that uploads and downloads keep their share.
    pool: rayon::ThreadPool,
    /// Probe results on their way to the index, written in batches (see
    /// [`record_layouts`]).
    layouts: std::sync::mpsc::Sender<(blake3::Hash, Layout)>,
    /// Renders in flight, one per (source, variant): later askers wait for it.
    flights: Mutex<HashMap<Key, Flight>>,
    /// Failed renders, with when they failed and under which spec.
    failures: moka::sync::Cache<Key, (Instant, String, PreviewError)>,
}

impl PreviewService {
    pub fn new(store: BlobStore, index: Index, config: PreviewConfig, clock: SharedClock) -> Self {
        let workers = Arc::new(Semaphore::new(config.worker_count()));
        // Exported from the start (dashboards show 0, not "no data").
        metrics::gauge!(metric::JOBS_QUEUED).increment(0.0);
        metrics::gauge!(metric::JOBS_RUNNING).increment(0.0);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.worker_count())
            .thread_name(|i| format!("preview-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .expect("cannot start the preview threads");
        let (layouts, rx) = std::sync::mpsc::channel();
        let writer = index.clone();
        std::thread::Builder::new()
            .name("preview-layouts".into())
            .spawn(move || record_layouts(&writer, rx))
            .expect("cannot start the layout writer thread");
        PreviewService(Arc::new(Inner {
            store,
            index,
            clock,
            workers,
            pool,
            layouts,
            config: ArcSwap::from_pointee(config),
            flights: Mutex::new(HashMap::new()),
            failures: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }))
    }

    /// Applies a reloaded `[preview]` (variants, limits, failure_ttl; the
    /// worker count stays).
    pub fn set_config(&self, config: PreviewConfig) {
        self.0.config.store(Arc::new(config));
    }

    /// The configured variant names (without `original`).
    pub fn variant_names(&self) -> Vec<String> {
        self.0.config.load().variants.keys().cloned().collect()
    }

    /// Whether `variant` may be signed: `original` or a configured one.
    pub fn knows(&self, variant: &str) -> bool {
        variant == "original" || self.0.config.load().variants.contains_key(variant)
    }

    /// What serves `variant` of the media, rendering it if needed.
    pub async fn resolve(&self, media: &MediaRow, variant: &str) -> Result<Resolved, PreviewError> {
        let config = self.0.config.load_full();
        let spec = config
            .variants
            .get(variant)
            .and_then(|v| v.spec().ok())
            .ok_or_else(|| PreviewError::UnknownVariant(variant.to_owned()))?;
        let fp = fingerprint(&spec);
        let key: Key = (media.hash, variant.to_owned());
        if let Some((at, spec_fp, e)) = self.0.failures.get(&key)
            && spec_fp == fp
            && at.elapsed() < config.failure_ttl
        {
            return Err(e);
        }
        if let Some(found) = self.recorded(media.hash, variant, &fp).await? {
            return Ok(found);
        }
        // Single flight: the first asker renders, the others wait for it.
        let flight = {
            let mut flights = self.0.flights.lock().expect("flights lock poisoned");
            flights.entry(key.clone()).or_default().clone()
        };
        let this = self.clone();
        let (mime, name, fp2) = (media.file_type.clone(), variant.to_owned(), fp.clone());
        let source = media.hash;
        let outcome = flight
            .get_or_init(|| async move {
                // Run detached: a client that goes away does not cancel it.
                let task = tokio::spawn(async move {
                    this.render_and_record(source, mime, name, spec, fp2).await
                });
                task.await
                    .unwrap_or_else(|e| Err(PreviewError::Storage(format!("render task: {e}"))))
            })
            .await
            .clone();
        {
            let mut flights = self.0.flights.lock().expect("flights lock poisoned");
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&key);
            }
        }
        // The file's own failures are remembered; a fault on this side
        // (I/O, encoder) is not, so the next request tries again.
        if let Err(e @ PreviewError::Engine { kind, .. }) = &outcome
            && *kind != media_preview::ErrorKind::Internal
        {
            self.0.failures.insert(key, (Instant::now(), fp, e.clone()));
        }
        outcome
    }

    /// The recorded rendition, if current (same spec) and its blob is there.
    async fn recorded(
        &self,
        source: blake3::Hash,
        variant: &str,
        fp: &str,
    ) -> Result<Option<Resolved>, PreviewError> {
        let variant = variant.to_owned();
        let row = self
            .0
            .index
            .read(move |r| r.rendition(&source, &variant))
            .await?;
        let Some(row) = row.filter(|r| r.spec_fingerprint == fp) else {
            return Ok(None);
        };
        match row.blob {
            None => Ok(Some(Resolved::Original)),
            Some(blob) => {
                let store = self.0.store.clone();
                let hash = blob.hash;
                let stored = crate::tasks::blocking(move || store.stat(&hash))
                    .await
                    .map_err(|e| PreviewError::Storage(e.to_string()))?;
                // A lost or damaged copy is rendered (and installed) again.
                Ok(stored
                    .is_some_and(|(_, size)| size == blob.size)
                    .then_some(Resolved::Blob(blob)))
            }
        }
    }

    async fn render_and_record(
        &self,
        source: blake3::Hash,
        mime: String,
        variant: String,
        spec: VariantSpec,
        fp: String,
    ) -> Result<Resolved, PreviewError> {
        // A flight that just finished may have recorded it.
        if let Some(found) = self.recorded(source, &variant, &fp).await? {
            return Ok(found);
        }
        let permit = self.slot().await?;
        let store = self.0.store.clone();
        let limits = self.0.config.load().limits();
        let name = variant.clone();
        let staged = self.on_pool(move || {
            let _permit = permit;
            let started = Instant::now();
            let copy = store.local_copy(&source).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    PreviewError::SourceGone
                } else {
                    PreviewError::Storage(e.to_string())
                }
            })?;
            let rendered =
                media_preview::render(media_preview::Input::Path(&copy.path), &mime, &spec, &limits);
            drop(copy);
            let seconds = started.elapsed().as_secs_f64();
            metrics::counter!(metric::RENDERS, "variant" => name.clone()).increment(1);
            metrics::histogram!(metric::RENDER_SECONDS).record(seconds);
            let rendition = match rendered {
                Err(e) => {
                    metrics::counter!(metric::RENDER_FAILURES, "code" => e.code()).increment(1);
                    tracing::warn!(blob.hash = %source.to_hex(), variant = %name, code = e.code(), error = %e, "rendition failed");
                    return Err(PreviewError::engine(&e));
                }
                Ok(media_preview::Rendered::UseOriginal) => {
                    tracing::info!(blob.hash = %source.to_hex(), variant = %name, render_ms = seconds * 1e3, "rendered variant: original is used");
                    return Ok(None);
                }
                Ok(media_preview::Rendered::Rendition(r)) => r,
            };
            tracing::info!(
                blob.hash = %source.to_hex(), variant = %name, width = rendition.width,
                height = rendition.height, size_bytes = rendition.bytes.len(),
                render_ms = seconds * 1e3, "rendered variant"
            );
            let mut staged = store.stage()?;
            staged.write_chunks(&[&rendition.bytes])?;
            if staged.hash() == source {
                // The rendition is the original itself: a row pointing at its
                // own source would keep it alive forever.
                return Ok(None);
            }
            if !store.is_remote() && store.stat_local(&staged.hash()).is_none() {
                staged.sync()?;
            }
            Ok(Some((
                staged,
                rendition.mime,
                rendition.width,
                rendition.height,
            )))
        })
        .await
        .map_err(|e| PreviewError::Storage(format!("render task: {e}")))??;

        if self.0.store.is_remote() {
            return self.record_remote(source, variant, fp, staged).await;
        }
        let store = self.0.store.clone();
        let clock = self.0.clock.clone();
        self.0
            .index
            .write(move |ctx| -> Result<Resolved, PreviewError> {
                let now = clock.now_ms();
                // Under the writer (and SQLite's write lock, which GC takes):
                // a source GC has forgotten gets no rendition row (R3).
                if ctx.blob_refcount(&source)?.is_none() {
                    return Err(PreviewError::SourceGone);
                }
                let Some((staged, mime, width, height)) = staged else {
                    ctx.put_rendition(&source, &variant, &fp, None, now)?;
                    return Ok(Resolved::Original);
                };
                let (hash, size) = (staged.hash(), staged.len());
                // The upload's rule (write protocol step 4): deduplicated only
                // when row and file of the right size exist, else installed.
                let count = ctx.blob_refcount(&hash)?;
                let held = crate::media::held(ctx, &store, &hash, size)?;
                if count.is_some() && held == Held::Whole {
                    if count == Some(0) {
                        ctx.require_durable(store.entry(&hash));
                    }
                    drop(staged);
                } else {
                    if let Held::Damaged(..) = held {
                        store.quarantine(&hash, now)?;
                    }
                    let mut staged = staged;
                    staged.sync()?;
                    let pending = store.install(staged, &hash)?;
                    ctx.require_durable(pending);
                    crate::media::installed_locally(ctx, &store, &hash)?;
                }
                let blob = RenditionBlob {
                    hash,
                    size,
                    mime: mime.to_owned(),
                    width,
                    height,
                };
                ctx.put_rendition(&source, &variant, &fp, Some(&blob), now)?;
                Ok(Resolved::Blob(blob))
            })
            .await
    }

    /// Records a rendition in a network store (storage-layout.md, "S3"):
    /// its object is put under a pin first, as an upload's is.
    async fn record_remote(
        &self,
        source: blake3::Hash,
        variant: String,
        fp: String,
        staged: Option<(StagingFile, &'static str, u32, u32)>,
    ) -> Result<Resolved, PreviewError> {
        let clock = self.0.clock.clone();
        let Some((staged, mime, width, height)) = staged else {
            return self
                .0
                .index
                .write(move |ctx| -> Result<Resolved, PreviewError> {
                    if ctx.blob_refcount(&source)?.is_none() {
                        return Err(PreviewError::SourceGone);
                    }
                    ctx.put_rendition(&source, &variant, &fp, None, clock.now_ms())?;
                    Ok(Resolved::Original)
                })
                .await;
        };
        let (hash, size) = (staged.hash(), staged.len());
        let pinned = crate::media::pin_and_put(&self.0.index, &self.0.store, &clock, staged)
            .await
            .map_err(|e| PreviewError::Storage(e.to_string()))?;
        let pin = pinned.pin;
        let recorded = self
            .0
            .index
            .write(move |ctx| -> Result<Resolved, PreviewError> {
                // A source GC has forgotten gets no rendition row (R3).
                if ctx.blob_refcount(&source)?.is_none() {
                    ctx.unpin_blob(pin)?;
                    return Err(PreviewError::SourceGone);
                }
                let blob = RenditionBlob {
                    hash,
                    size,
                    mime: mime.to_owned(),
                    width,
                    height,
                };
                ctx.put_rendition(&source, &variant, &fp, Some(&blob), clock.now_ms())?;
                ctx.unpin_blob(pin)?;
                Ok(Resolved::Blob(blob))
            })
            .await;
        if recorded.is_err() {
            let _ = self
                .0
                .index
                .write(move |ctx| -> Result<(), PreviewError> { Ok(ctx.unpin_blob(pin)?) })
                .await;
        }
        recorded
    }

    /// Waits for a worker slot.
    async fn slot(&self) -> Result<Slot, PreviewError> {
        let queued = Queued::new();
        let permit = self.0.workers.clone().acquire_owned().await;
        drop(queued);
        let permit = permit.map_err(|e| PreviewError::Storage(e.to_string()))?;
        metrics::gauge!(metric::JOBS_RUNNING).increment(1.0);
        Ok(Slot(permit))
    }

    /// Runs CPU work on the preview threads (the caller holds a permit, so
    /// at most `workers` jobs are ever queued or running there).
    async fn on_pool<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::sync::oneshot::error::RecvError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        self.0.pool.spawn(move || {
            let _ = tx.send(span.in_scope(f));
        });
        rx.await
    }

    /// After an upload of new content: probes its layout (width, height,
    /// duration, ThumbHash) and renders the eager variants, in the
    /// background, on the worker pool. Duplicates copy the layout of their
    /// siblings at insert and share their renditions.
    pub fn after_upload(&self, media: &MediaRow, deduplicated: bool) {
        let config = self.0.config.load_full();
        let eager: Vec<String> = config
            .variants
            .iter()
            .filter(|(_, v)| v.eager)
            .map(|(n, _)| n.clone())
            .collect();
        let probe = config.probe && (!deduplicated || media.layout.is_empty());
        if !probe && eager.is_empty() {
            return;
        }
        let this = self.clone();
        let media = media.clone();
        tokio::spawn(async move {
            if probe && let Err(e) = this.probe(&media).await {
                tracing::warn!(media.id = media.id, error = %e, "probing the upload failed");
            }
            for variant in eager {
                if let Err(e) = this.resolve(&media, &variant).await {
                    tracing::warn!(media.id = media.id, variant, code = e.code(), error = %e, "eager rendition failed");
                }
            }
        });
    }

    /// Probes the media's content and records its layout on every media row
    /// of that content still without one.
    pub async fn probe(&self, media: &MediaRow) -> Result<Layout, PreviewError> {
        let permit = self.slot().await?;
        let store = self.0.store.clone();
        let limits = self.0.config.load().limits();
        let (hash, mime) = (media.hash, media.file_type.clone());
        let info = self
            .on_pool(move || {
                let _permit = permit;
                let copy = store
                    .local_copy(&hash)
                    .map_err(|e| PreviewError::Storage(e.to_string()))?;
                let started = Instant::now();
                let info =
                    media_preview::probe(media_preview::Input::Path(&copy.path), &mime, &limits)
                        .map_err(|e| PreviewError::engine(&e));
                metrics::counter!(metric::PROBES).increment(1);
                metrics::histogram!(metric::PROBE_SECONDS).record(started.elapsed().as_secs_f64());
                info
            })
            .await
            .map_err(|e| PreviewError::Storage(e.to_string()))??;
        let layout = Layout {
            width: info.width,
            height: info.height,
            duration_ms: info.duration_ms,
            thumbhash: info.thumbhash,
        };
        if layout.is_empty() {
            return Ok(layout);
        }
        tracing::info!(media.id = media.id, width = ?layout.width, height = ?layout.height, duration_ms = ?layout.duration_ms, "probed upload");
        let _ = self.0.layouts.send((hash, layout.clone()));
        Ok(layout)
    }
}

/// How long probe results wait to share one index write.
const LAYOUT_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// Writes probe results to the index, many per write job: one write job per
/// probe would cost a group commit (a barrier and a WAL fsync) each, taken
/// from uploads, which share the one index writer. Ends when the service is
/// dropped.
fn record_layouts(index: &Index, rx: std::sync::mpsc::Receiver<(blake3::Hash, Layout)>) {
    while let Ok(first) = rx.recv() {
        std::thread::sleep(LAYOUT_BATCH_WINDOW);
        let mut batch = vec![first];
        batch.extend(rx.try_iter().take(1024));
        let count = batch.len();
        let written = index.write_blocking(move |ctx| -> Result<u64, IndexError> {
            let mut rows = 0;
            for (hash, layout) in &batch {
                rows += ctx.set_layout(hash, layout)?;
            }
            Ok(rows)
        });
        match written {
            Ok(rows) => tracing::debug!(probes = count, rows, "recorded upload layouts"),
            Err(e) => tracing::warn!(error = %e, probes = count, "cannot record upload layouts"),
        }
    }
}

/// Lowers the calling thread's CPU priority (nice 10): renders yield to
/// uploads and downloads when the cores are busy, and use them when idle.
/// On Linux the nice value is per thread; a failure only costs the hint.
fn lower_priority() {
    // SAFETY: a plain syscall on the calling thread (who = 0); no memory passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the preview threads' priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_variants_are_the_engines_and_valid() {
        let c = PreviewConfig::default();
        c.validate().unwrap();
        for (name, spec) in VariantSpec::defaults() {
            assert_eq!(c.variants[name].spec().unwrap().fit, spec.fit, "{name}");
        }
    }

    #[test]
    fn bad_variants_are_refused() {
        let mut c = PreviewConfig::default();
        c.variants.get_mut("thumb").unwrap().format = "gif".into();
        assert!(c.validate().is_err());
        let mut c = PreviewConfig::default();
        let thumb = c.variants["thumb"].clone();
        c.variants.insert("original".into(), thumb);
        assert!(c.validate().is_err());
    }

    #[test]
    fn fingerprints_change_with_the_spec() {
        let a = PreviewConfig::default().variants["thumb"].spec().unwrap();
        let mut b = a;
        b.quality = 50;
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn engine_errors_map_to_clear_answers() {
        let e = |err: media_preview::PreviewError| PreviewError::engine(&err);
        let bomb = e(media_preview::PreviewError::TooManyPixels {
            width: 1,
            height: 1,
            max: 0,
        });
        assert_eq!(
            (bomb.kind(), bomb.code()),
            (ErrorKind::Unprocessable, "too_many_pixels")
        );
        let audio = e(media_preview::PreviewError::VariantNotAvailable("x".into()));
        assert_eq!(
            (audio.kind(), audio.code()),
            (ErrorKind::NotFound, "variant_not_available")
        );
        let slow = e(media_preview::PreviewError::TimedOut {
            tool: "ffmpeg".into(),
            timeout: Duration::from_secs(1),
        });
        assert_eq!(slow.kind(), ErrorKind::Unavailable);
        assert_eq!(slow.retry_after(), Some(30));
        let svg = e(media_preview::PreviewError::UnsupportedType(
            "image/svg+xml".into(),
        ));
        assert_eq!(svg.kind(), ErrorKind::Unprocessable);
    }
}
