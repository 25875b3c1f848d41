//! Live reload: watch the config file and apply changes without a restart.
//!
//! Editors and config managers often replace a file rather than write it in
//! place, so the watcher follows the file's folder and reacts to any event
//! naming the file. A file that fails to parse or validate changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::app::AppState;
use crate::config::Config;

/// Events closer together than this are one change (editors write in steps).
const SETTLE: Duration = Duration::from_millis(200);

/// Watches `path`; on change, calls `load` and applies its result to `state`.
/// The watcher stops when the returned handle is dropped.
pub fn watch_config<L>(path: &Path, state: AppState, load: L) -> notify::Result<RecommendedWatcher>
where
    L: Fn() -> anyhow::Result<Config> + Send + 'static,
{
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let folder = path
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = path.file_name().map(|n| n.to_owned());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            match load() {
                Ok(config) => {
                    let ignored = state.reload(config);
                    if ignored.is_empty() {
                        tracing::info!("configuration reloaded");
                    } else {
                        tracing::warn!(keys = ?ignored, "configuration reloaded; these keys need a restart and keep their running values");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "configuration not reloaded: the file is invalid; the running config stays")
                }
            }
        }
    });
    Ok(watcher)
}
