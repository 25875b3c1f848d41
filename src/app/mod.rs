//! The composition root: the one place that builds concrete types (blob
//! store, index, media service, MySQL mirror, URL signer, HTTP state) from the
//! config, wires them together, applies reloads, and starts background tasks.

pub mod reload;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use base64::Engine as _;

use crate::clock::{self, SharedClock};
use crate::config::Config;
use crate::http::{HttpSettings, HttpState};
use crate::index::{DurabilityBarrier, Index, Maintenance};
use crate::lifecycle::ExternalReferences;
use crate::lifecycle::gc::{self, GcOptions, GcSummary};
use crate::lifecycle::refs::References;
use crate::media::MediaService;
use crate::media::quota::Quota;
use crate::mirror::MysqlSync;
use crate::policy::Policy;
use crate::preview::PreviewService;
use crate::signing::Signer;
use crate::store::BlobStore;

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    /// The running config; replaced whole by [`AppState::reload`].
    config: ArcSwap<Config>,
    http: HttpState,
    /// The token from the data folder, used while the config sets none.
    file_token: Option<String>,
    /// The data folder's generated signing key, used while `[signing]` lists none.
    file_signing_key: Option<SigningKey>,
    clock: SharedClock,
    /// Held for the daemon's lifetime: a second daemon on the same data folder
    /// would delete this one's staging files at its start.
    _lock: Option<nix::fcntl::Flock<fs::File>>,
}

/// What start-up did that an operator should hear about.
#[derive(Debug, Default)]
pub struct StartReport {
    pub generated_token: Option<PathBuf>,
    pub generated_signing_key: Option<PathBuf>,
    pub stale_staging_files_removed: usize,
}

impl AppState {
    /// Opens the data folder for serving: takes its lock, removes staging files
    /// left by a crash, opens and migrates the index, and loads the API token.
    pub fn open(config: Config) -> anyhow::Result<(AppState, StartReport)> {
        Self::open_with_clock(config, clock::system())
    }

    /// [`AppState::open`] with the clock every module reads "now" from.
    pub fn open_with_clock(
        config: Config,
        clock: SharedClock,
    ) -> anyhow::Result<(AppState, StartReport)> {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let store = with_configured_tiers(BlobStore::open(&config.data_dir)?, &config)?;
        check_blob_backend(&config.data_dir, &store)?;
        // No upload is in flight before we serve, so every staging file is debris.
        let stale = store.clean_tmp(Duration::ZERO)?;
        let barrier_store = store.clone();
        let barrier: DurabilityBarrier =
            Arc::new(move |pending| barrier_store.make_durable(pending));
        let index = Index::open(
            &crate::index::path_in(&config.data_dir),
            &config.index,
            barrier,
        )?;
        let (file_token, generated_token) = load_or_create_token(&config)?;
        crate::telemetry::prometheus();
        let mysql = Arc::new(MysqlSync::start(
            &config.mysql,
            &config.public_base_url,
            &config.data_dir,
            &index,
            clock.clone(),
        )?);
        let (file_signing_key, generated_signing_key) = if config.signing.keys.is_empty() {
            load_signing_key_file(&config.data_dir, true)?
        } else {
            (None, None)
        };
        let signer = Signer::from_config(&config.signing, file_signing_key.clone(), clock.clone())
            .map_err(anyhow::Error::msg)?;
        let previews = PreviewService::new(
            store.clone(),
            index.clone(),
            config.preview.clone(),
            clock.clone(),
        );
        let media = MediaService::new(
            store,
            index.clone(),
            Policy::new(config.upload.clone()),
            clock.clone(),
        );
        media.set_quota(quota(&config));
        let refs = References::new(index, clock.clone());
        let http = HttpState::new(
            http_settings(&config, file_token.as_deref()),
            media,
            previews,
            refs,
            mysql,
            signer,
            config.index.reader_connections,
        );
        let state = AppState(Arc::new(Inner {
            config: ArcSwap::from_pointee(config),
            http,
            file_token,
            file_signing_key,
            clock,
            _lock: Some(lock),
        }));
        Ok((
            state,
            StartReport {
                generated_token,
                generated_signing_key,
                stale_staging_files_removed: stale,
            },
        ))
    }

    /// The running config (a snapshot: a reload does not change it under you).
    pub fn config(&self) -> Arc<Config> {
        self.0.config.load_full()
    }

    /// What the HTTP layer serves from.
    pub fn http(&self) -> &HttpState {
        &self.0.http
    }

    pub fn media(&self) -> &MediaService {
        self.0.http.media()
    }

    pub fn clock(&self) -> &SharedClock {
        &self.0.clock
    }

    /// The service token: the configured one, else the data folder's.
    pub fn api_token(&self) -> String {
        self.0.http.api_token()
    }

    /// Applies a re-read config to the running daemon. Keys that need a restart
    /// keep their running values; their names are returned.
    pub fn reload(&self, new: Config) -> Vec<&'static str> {
        let running = self.0.config.load_full();
        let (applied, ignored) = new.with_restart_keys_from(&running);
        if applied.api_token.is_empty() && self.0.file_token.is_none() {
            // No token to fall back on: keep the running one rather than lock everyone out.
            tracing::warn!("reload would leave no API token; keeping the running config");
            return vec!["api_token"];
        }
        // Keys rotate live. A config whose keys cannot sign (no key at all,
        // because the generated one was never created) keeps the running signer.
        match Signer::from_config(
            &applied.signing,
            self.0.file_signing_key.clone(),
            self.0.clock.clone(),
        ) {
            Ok(signer) => self.0.http.set_signer(signer),
            Err(e) => {
                tracing::warn!(error = %e, "signing keys not reloaded; keeping the running ones");
                return vec!["signing"];
            }
        }
        let http = &self.0.http;
        http.media().set_policy(Policy::new(applied.upload.clone()));
        http.media().set_quota(quota(&applied));
        http.previews().set_config(applied.preview.clone());
        http.mysql().set_public_base_url(&applied.public_base_url);
        http.set_settings(http_settings(&applied, self.0.file_token.as_deref()));
        self.0.config.store(Arc::new(applied));
        ignored
    }
}

fn quota(config: &Config) -> Quota {
    Quota {
        bytes: config.retention.quota_bytes,
        files: config.retention.quota_files,
    }
}

fn http_settings(config: &Config, file_token: Option<&str>) -> HttpSettings {
    let api_token = if config.api_token.is_empty() {
        file_token.unwrap_or_default().to_owned()
    } else {
        config.api_token.clone()
    };
    HttpSettings {
        api_token,
        public_base_url: config.public_base_url.clone(),
        serve: config.serve.clone(),
        cors: config.cors.clone(),
        limits: config.limits.clone(),
        metrics: config.metrics.clone(),
    }
}

/// The external reference source for this configuration, if any (the chat
/// backend's messages in MySQL). Retention in `media-store gc` and in the
/// daemon's background task both get theirs here.
pub fn external_references(config: &Config) -> anyhow::Result<Option<Arc<dyn ExternalReferences>>> {
    Ok(crate::mirror::MysqlReferences::from_config(&config.mysql)
        .map_err(|e| anyhow::anyhow!("mysql.url: {e}"))?
        .map(|refs| Arc::new(refs) as Arc<dyn ExternalReferences>))
}

/// One retention + GC run over the configured data folder, as `media-store
/// gc` and the daemon's background task do it.
pub fn run_gc(config: &Config, opts: &GcOptions) -> anyhow::Result<GcSummary> {
    let external = external_references(config)?;
    let (mut index, store) = open_existing_store(config)?;
    gc::run(
        &mut index,
        &store,
        &config.retention,
        opts,
        external.as_deref(),
    )
}

/// Adds a `media-store gc` run (`Err`: it failed) to its record in the index,
/// which the daemon exports on `/metrics` (`lifecycle::runs`).
pub fn record_gc_run(
    config: &Config,
    run: Result<&GcSummary, ()>,
    now_ms: i64,
) -> anyhow::Result<()> {
    let mut index = crate::index::Maintenance::open_existing(&config.data_dir)?;
    crate::lifecycle::runs::record_gc_cli(&mut index, run, now_ms)
}

/// The daemon's own GC loop (`gc.interval` > 0): runs retention + GC on its
/// own connection every interval, exactly as `media-store gc` would. Stops
/// when the returned handle is aborted or dropped with the runtime.
pub fn spawn_background_gc(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let interval = state.config().gc.interval;
            if interval.is_zero() {
                // Off; look again later in case a reload turns it on.
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
            tokio::time::sleep(interval).await;
            let config = state.config();
            let now = state.clock().now_ms();
            let outcome = crate::tasks::blocking(move || {
                let opts = GcOptions::from_config(&config.gc, &config.archive, now);
                run_gc(&config, &opts)
            })
            .await;
            match &outcome {
                Ok(Ok(s)) => crate::lifecycle::gc::record_metrics(s, state.clock().now_ms()),
                _ => crate::lifecycle::gc::record_failed_run(),
            }
            match outcome {
                Ok(Ok(s)) => tracing::info!(
                    blobs_deleted = s.blobs_deleted,
                    bytes_freed = s.bytes_freed,
                    media_expired = s.retention.orphans_expired + s.retention.aged_expired,
                    unknown_files_deleted = s.unknown_files_deleted,
                    multipart_uploads_aborted = s.multipart_uploads_aborted,
                    duration_ms = s.duration_ms,
                    "background gc finished"
                ),
                Ok(Err(e)) => tracing::error!(error = format!("{e:#}"), "background gc failed"),
                Err(e) => tracing::error!(error = %e, "background gc task panicked"),
            }
        }
    })
}

/// `media-store import`: the blob store, index and media service of the
/// configured data folder (created if new), without the daemon's lock: import
/// may run beside a running daemon, as `media-store gc` does (both go through
/// SQLite's write lock and the blob store's protocol).
pub async fn run_import(
    config: &Config,
    opts: &crate::mirror::import::ImportOptions,
) -> anyhow::Result<crate::mirror::import::ImportReport> {
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
    let store = with_configured_tiers(BlobStore::open(&config.data_dir)?, config)?;
    let barrier_store = store.clone();
    let barrier: DurabilityBarrier = Arc::new(move |pending| barrier_store.make_durable(pending));
    let index = Index::open(
        &crate::index::path_in(&config.data_dir),
        &config.index,
        barrier,
    )?;
    let clock = clock::system();
    let media = MediaService::new(
        store,
        index,
        Policy::new(config.upload.clone()),
        clock.clone(),
    );
    Ok(crate::mirror::import::run(
        &media,
        &config.mysql,
        &config.public_base_url,
        opts,
        clock.as_ref(),
    )
    .await?)
}

/// `media-store init-archive`: makes `archive.root` this store's archive root
/// on purpose (its store-id marker), creating the data folder's own marker
/// if the data folder is new.
pub fn init_archive(config: &Config, adopt_existing: bool) -> anyhow::Result<String> {
    let root = config
        .archive
        .root()
        .context("archive.root is not set: nothing to initialise")?;
    fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
    let store = BlobStore::open(&config.data_dir)?;
    Ok(match store.init_archive(root, adopt_existing)? {
        crate::store::ArchiveInit::Initialised => format!(
            "{} is now the archive root of store {}",
            root.display(),
            store.id()
        ),
        crate::store::ArchiveInit::AlreadyThis => format!(
            "{} already is the archive root of store {}",
            root.display(),
            store.id()
        ),
    })
}

/// `media-store sign-url`: signs from the config's keys (or the data folder's
/// generated key) and the index, without a running daemon.
pub fn sign_url_offline(
    config: &Config,
    id: i64,
    ttl_secs: Option<u64>,
    variant: &str,
    attachment: bool,
) -> anyhow::Result<crate::http::routes::urls::SignedUrlView> {
    let fallback = if config.signing.keys.is_empty() {
        let (key, _) = load_signing_key_file(&config.data_dir, false)?;
        Some(key.context(
            "no signing key: configure [signing] keys or start the daemon once to generate one",
        )?)
    } else {
        None
    };
    let signer = Signer::from_config(&config.signing, fallback, clock::system())
        .map_err(anyhow::Error::msg)?;
    let index = Maintenance::open_existing(&config.data_dir)?;
    let row = index
        .reader()
        .get_media(id)?
        .with_context(|| format!("media {id} does not exist"))?;
    let known = |v: &str| v == "original" || config.preview.variants.contains_key(v);
    crate::http::routes::urls::sign_media_url(
        &signer,
        &config.public_base_url,
        &row,
        ttl_secs,
        Some(variant),
        attachment,
        &known,
    )
    .map_err(|e| anyhow::anyhow!("{}", e.message))
}

/// Adds the configured archive tier (a root or the bucket) and backend.
fn with_configured_tiers(store: BlobStore, config: &Config) -> anyhow::Result<BlobStore> {
    Ok(store
        .with_archive(config.archive.root())?
        .with_backend(&config.store)?
        .with_archive_bucket(config.archive.in_bucket().then_some(&config.store))?)
}

/// The index and blob store of an existing data folder, for a lifecycle
/// run (`gc`, `fsck`): a folder without an index is refused.
pub fn open_existing_store(
    config: &Config,
) -> anyhow::Result<(crate::index::Maintenance, BlobStore)> {
    let (index, store) = gc::open_existing(&config.data_dir, None)?;
    Ok((index, with_configured_tiers(store, config)?))
}

/// Refuses to serve from a backend the index's blobs are not in
/// (storage-layout.md, "S3"): switching `store.backend` is done by
/// `media-store migrate-store`, which records the switch once every blob is
/// copied. A new, empty index takes the configured backend.
fn check_blob_backend(data_dir: &Path, store: &BlobStore) -> anyhow::Result<()> {
    let mut index = crate::index::Maintenance::create(data_dir)?;
    let configured = store.backend_name();
    let recorded = index.reader().blob_backend()?;
    let holds_blobs = index.reader().count_blobs()? > 0;
    match recorded.as_deref() {
        Some(r) if r == configured => Ok(()),
        None if !holds_blobs || configured == "local" => {
            index.immediate(|tx| Ok::<_, anyhow::Error>(tx.set_blob_backend(configured)?))
        }
        r => anyhow::bail!(
            "the index's blobs are in the {} backend but store.backend is \"{configured}\": \
             run `media-store migrate-store --to {configured}` first (it copies every blob, \
             verified, and switches when all are there), or set store.backend back",
            r.unwrap_or("local")
        ),
    }
}

/// `media-store migrate-store --to s3|local`: copies every blob of the
/// configured data folder from the backend it is in to the other one
/// (`[store.s3]` names the bucket either way). With the daemon running (its
/// lock held) only the copy is made; stopped, the copy is completed and the
/// switch recorded, after which the daemon must be started with
/// `store.backend` set to the target.
pub fn migrate_store(
    config: &Config,
    to: crate::store::Backend,
    progress: bool,
) -> anyhow::Result<crate::lifecycle::migrate::MigrateSummary> {
    use crate::store::{Backend, StoreConfig};
    if config.archive.in_bucket() {
        anyhow::bail!(
            "archive.backend = \"s3\": the bucket is the archive tier already; migrate-store \
             moves a whole store between backends, so set archive.backend = \"local\" first"
        );
    }
    let from_backend = match to {
        Backend::S3 => Backend::Local,
        Backend::Local => Backend::S3,
    };
    let with = |backend| StoreConfig {
        backend,
        s3: config.store.s3.clone(),
    };
    let (mut index, base) = gc::open_existing(&config.data_dir, config.archive.root())?;
    let from = base.clone().with_backend(&with(from_backend))?;
    let target = base.with_backend(&with(to))?;
    let lock = lock_data_dir(&config.data_dir).ok();
    let mut summary =
        crate::lifecycle::migrate::run(&mut index, &from, &target, progress, lock.is_some())?;
    if lock.is_none() {
        summary.note = Some(
            "the daemon is running: blobs copied, switch not recorded; stop the daemon and run \
             migrate-store again (it copies only what is new), then start it with the new \
             store.backend"
                .into(),
        );
    }
    Ok(summary)
}

fn lock_data_dir(data_dir: &Path) -> anyhow::Result<nix::fcntl::Flock<fs::File>> {
    let path = data_dir.join("daemon.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "another media-store daemon is using {} ({e})",
            data_dir.display()
        )
    })
}

const TOKEN_FILE: &str = "api-token";

/// With no token configured: the one stored in the data folder, or a new one
/// (whose path is returned too).
fn load_or_create_token(config: &Config) -> anyhow::Result<(Option<String>, Option<PathBuf>)> {
    if !config.api_token.is_empty() {
        return Ok((None, None));
    }
    let path = config.data_dir.join(TOKEN_FILE);
    if let Some(token) = read_private_file(&path)? {
        if token.is_empty() {
            bail!("{} is empty", path.display());
        }
        return Ok((Some(token), None));
    }
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    create_private_file(&path, &token)?;
    Ok((Some(token), Some(path)))
}

/// Reads a secret file of the data folder (trimmed); `None` when it does not
/// exist. A file other users could read is refused: the secret may have leaked.
fn read_private_file(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by other users (mode {:o}); run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                );
            }
            Ok(Some(text.trim().to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Creates a secret file, mode 0600 from the start, durably; never overwrites.
fn create_private_file(path: &Path, line: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{line}")?;
    file.sync_all()?;
    // The folder entry too: without it a power cut loses the file, the next
    // start generates a new secret, and every URL signed before fails.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()?;
    Ok(())
}

const SIGNING_KEY_FILE: &str = "signing-key";

/// A signing key: its id and secret bytes.
pub type SigningKey = (String, Vec<u8>);

/// The data folder's signing key (`<kid> <base64url secret>`, mode 0600), used
/// while `[signing]` lists no keys. With `create`, a missing file is generated
/// (and its path returned); without, a missing file is `None`.
pub fn load_signing_key_file(
    data_dir: &Path,
    create: bool,
) -> anyhow::Result<(Option<SigningKey>, Option<PathBuf>)> {
    let path = data_dir.join(SIGNING_KEY_FILE);
    if let Some(text) = read_private_file(&path)? {
        let (kid, secret) = text
            .trim()
            .split_once(' ')
            .with_context(|| format!("{} is not `<kid> <secret>`", path.display()))?;
        crate::signing::check_kid(kid).map_err(anyhow::Error::msg)?;
        let secret = crate::signing::decode_secret(secret)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((Some((kid.to_owned(), secret)), None));
    }
    if !create {
        return Ok((None, None));
    }
    let kid = format!("gen-{:08x}", rand::random::<u32>());
    let secret = crate::signing::generate_secret();
    create_private_file(&path, &format!("{kid} {secret}"))?;
    let bytes = crate::signing::decode_secret(&secret).map_err(anyhow::Error::msg)?;
    Ok((Some((kid, bytes)), Some(path)))
}
