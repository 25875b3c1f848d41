//! Application state shared by every request: handles only, no logic.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine as _;

use crate::config::Config;
use crate::index::Index;
use crate::media::MediaService;
use crate::policy::Policy;
use crate::store::{self, BlobStore};

/// Cheap to clone: one `Arc` around the shared parts.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    config: Config,
    media: MediaService,
    api_token: String,
    /// Held for the daemon's lifetime: a second daemon on the same data folder
    /// would delete this one's staging files at its start.
    _lock: Option<nix::fcntl::Flock<fs::File>>,
}

/// What start-up did that an operator should hear about.
#[derive(Debug, Default)]
pub struct StartReport {
    pub generated_token: Option<PathBuf>,
    pub stale_staging_files_removed: usize,
}

impl AppState {
    /// Opens the data folder for serving: takes its lock, removes staging files
    /// left by a crash, opens and migrates the index, and loads the API token.
    pub fn open(config: Config) -> anyhow::Result<(AppState, StartReport)> {
        fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data folder {}", config.data_dir.display()))?;
        let lock = lock_data_dir(&config.data_dir)?;
        let store = BlobStore::open(&config.data_dir)?;
        // No upload is in flight before we serve, so every staging file is debris.
        let stale = store.clean_tmp(std::time::Duration::ZERO)?;
        let index = Index::open(
            &index_path(&config.data_dir),
            config.index.group_commit_max,
            config.index.reader_connections,
            store::make_dirs_durable,
        )?;
        let (api_token, generated_token) = load_or_create_token(&config)?;
        let media = MediaService::new(store, index, Policy::new(config.upload.clone()));
        let state = AppState(Arc::new(Inner {
            config,
            media,
            api_token,
            _lock: Some(lock),
        }));
        Ok((
            state,
            StartReport {
                generated_token,
                stale_staging_files_removed: stale,
            },
        ))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn media(&self) -> &MediaService {
        &self.0.media
    }

    pub fn api_token(&self) -> &str {
        &self.0.api_token
    }

    pub fn public_base_url(&self) -> &str {
        &self.0.config.public_base_url
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

/// The configured token, or the one stored in the data folder, or a new one.
fn load_or_create_token(config: &Config) -> anyhow::Result<(String, Option<PathBuf>)> {
    if !config.api_token.is_empty() {
        return Ok((config.api_token.clone(), None));
    }
    let path = config.data_dir.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(token) => {
            let mode = fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable by other users (mode {:o}); run `chmod 600` on it",
                    path.display(),
                    mode & 0o777
                );
            }
            let token = token.trim().to_owned();
            if token.is_empty() {
                bail!("{} is empty", path.display());
            }
            Ok((token, None))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            Ok((token, Some(path)))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
