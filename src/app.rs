//! Application state shared by every request: handles only, no logic.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use arc_swap::ArcSwap;
use base64::Engine as _;

use crate::config::Config;
use crate::index::Index;
use crate::media::MediaService;
use crate::policy::Policy;
use crate::signing::{Clock, Signer, SystemClock};
use crate::store::{self, BlobStore};

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    /// The running config; replaced whole by [`AppState::reload`].
    config: ArcSwap<Config>,
    media: MediaService,
    /// The MySQL mirror's worker handle; dropping it stops the worker.
    mysql: crate::sync::MysqlSync,
    /// The token from the data folder, used while the config sets none.
    file_token: Option<String>,
    /// Built from `[signing]` (or the data folder's generated key); swapped
    /// whole by [`AppState::reload`] so keys rotate without a restart.
    signer: ArcSwap<Signer>,
    /// The data folder's generated signing key, used while `[signing]` lists none.
    file_signing_key: Option<SigningKey>,
    clock: Arc<dyn Clock>,
    /// Downloads looking up their row at once: as many as the index keeps read
    /// connections, so a burst waits here (async) instead of opening new
    /// SQLite connections on blocking threads.
    download_slots: tokio::sync::Semaphore,
    download_cache: crate::http::routes::files::DownloadCache,
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
        Self::open_with_clock(config, Arc::new(SystemClock))
    }

    /// [`AppState::open`] with the clock that signed URLs are checked against.
    pub fn open_with_clock(
        config: Config,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<(AppState, StartReport)> {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let store = BlobStore::open(&config.data_dir)?.with_archive(config.archive.root())?;
        // No upload is in flight before we serve, so every staging file is debris.
        let stale = store.clean_tmp(std::time::Duration::ZERO)?;
        let index = Index::open(
            &index_path(&config.data_dir),
            config.index.group_commit_max,
            config.index.reader_connections,
            store::make_dirs_durable,
        )?;
        let (file_token, generated_token) = load_or_create_token(&config)?;
        crate::telemetry::prometheus();
        let mysql = crate::sync::MysqlSync::start(&config, &index)?;
        let (file_signing_key, generated_signing_key) = if config.signing.keys.is_empty() {
            let (key, created) = load_signing_key_file(&config.data_dir, true)?;
            (key, created)
        } else {
            (None, None)
        };
        let signer = Signer::from_config(&config.signing, file_signing_key.clone(), clock.clone())
            .map_err(anyhow::Error::msg)?;
        let media = MediaService::new(store, index, Policy::new(config.upload.clone()));
        media.set_quota(crate::lifecycle::quota::Quota::from_config(
            &config.retention,
        ));
        let download_slots = tokio::sync::Semaphore::new(config.index.reader_connections);
        let state = AppState(Arc::new(Inner {
            config: ArcSwap::from_pointee(config),
            media,
            mysql,
            file_token,
            signer: ArcSwap::from_pointee(signer),
            file_signing_key,
            clock,
            download_slots,
            download_cache: Default::default(),
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

    pub fn media(&self) -> &MediaService {
        &self.0.media
    }

    pub fn mysql(&self) -> &crate::sync::MysqlSync {
        &self.0.mysql
    }

    /// The service token: the configured one, else the data folder's.
    pub fn api_token(&self) -> String {
        let config = self.0.config.load();
        if config.api_token.is_empty() {
            self.0.file_token.clone().unwrap_or_default()
        } else {
            config.api_token.clone()
        }
    }

    /// The URL signer of the running config.
    pub fn signer(&self) -> Arc<Signer> {
        self.0.signer.load_full()
    }

    pub fn download_cache(&self) -> &crate::http::routes::files::DownloadCache {
        &self.0.download_cache
    }

    pub fn download_slots(&self) -> &tokio::sync::Semaphore {
        &self.0.download_slots
    }

    pub fn public_base_url(&self) -> String {
        self.0.config.load().public_base_url.clone()
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
            Ok(signer) => self.0.signer.store(Arc::new(signer)),
            Err(e) => {
                tracing::warn!(error = %e, "signing keys not reloaded; keeping the running ones");
                return vec!["signing"];
            }
        }
        self.0.media.set_policy(Policy::new(applied.upload.clone()));
        self.0.mysql.set_public_base_url(&applied.public_base_url);
        self.0
            .media
            .set_quota(crate::lifecycle::quota::Quota::from_config(
                &applied.retention,
            ));
        self.0.config.store(Arc::new(applied));
        ignored
    }
}

pub fn index_path(data_dir: &Path) -> PathBuf {
    data_dir.join("index.sqlite3")
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
    // And its name: else a power cut brings a new secret at the next start.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    store::fsync_dir(dir.unwrap_or(Path::new(".")))?;
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
