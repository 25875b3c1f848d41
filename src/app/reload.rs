//! Live reload: watch the config file and apply changes without a restart.
//!
//! Editors and config managers often replace a file rather than write it in
//! place, so the watcher follows the file's folder and reacts to content
//! changes naming the file (writes, creates, renames, removals), never to
//! reads: reading the file to reload it (or an operator's `cat`, or `gc
//! --config` from the timer) must not trigger another reload. A reload whose
//! result equals the last one read changes nothing and logs nothing; a file
//! that fails to parse or validate changes nothing either.
//!
//! The settling below is a few lines on the runtime the daemon already has;
//! `notify-debouncer-full` would add a thread and rename tracking that a
//! watch on the folder, matched by name, does not need.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{EventKind, ModifyKind};
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
            && changes_content(&event.kind)
            && event.paths.iter().any(|p| p.file_name() == name.as_deref())
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        // What the file said when last read: the running config at start.
        let mut last = (*state.config()).clone();
        while rx.recv().await.is_some() {
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            match load() {
                Ok(config) if config == last => {
                    tracing::debug!("config file touched; its content is unchanged");
                }
                Ok(config) => {
                    last = config.clone();
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

/// Whether an event can change what the file says: not reads (access, open,
/// close without writing) and not metadata (a `chmod`).
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Other => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, MetadataKind, RenameMode};

    #[test]
    fn reads_and_metadata_are_not_content_changes() {
        assert!(!changes_content(&EventKind::Access(AccessKind::Read)));
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!changes_content(&EventKind::Modify(ModifyKind::Metadata(
            MetadataKind::Permissions
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Data(
            DataChange::Content
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
    }
}
