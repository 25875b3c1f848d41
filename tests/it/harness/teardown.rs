//! The consistency oracle every test runs when its daemon handle goes away
//! ([`TestApp`](super::TestApp), [`TestDaemon`](super::TestDaemon)): the
//! MySQL outbox drains while the daemon still runs (when a mirror is
//! configured), and once it has stopped, the data folder (and archive root)
//! holds storage-layout.md's invariants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use media_store::config::{Config, Overrides};

use super::{consistency_problems, outbox_len, poll_blocking};

/// How long a mirror may take to catch up at teardown.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

pub struct Teardown {
    data: PathBuf,
    archive: Option<PathBuf>,
    /// With the S3 backend or an archive bucket: its config (blobs are
    /// checked through the store, in the bucket or on disk).
    s3: Option<media_store::store::StoreConfig>,
    mirror: bool,
    /// Set by a test that leaves damage on purpose (fsck's known losses).
    damage: Option<&'static str>,
    done: bool,
}

impl Teardown {
    /// What to check for a daemon on `data` run with `config`.
    pub fn new(data: &Path, config: &Config) -> Teardown {
        Teardown {
            data: data.to_owned(),
            archive: config.archive.root().map(Path::to_owned),
            s3: (config.store.backend == media_store::store::Backend::S3
                || config.archive.in_bucket())
            .then(|| config.store.clone()),
            mirror: !config.mysql.url.is_empty(),
            damage: None,
            done: false,
        }
    }

    /// For the real binary: its config file's text, read as the daemon does.
    pub fn for_toml(data: &Path, toml: &str) -> Teardown {
        let env = std::collections::BTreeMap::from([(
            "MEDIA_STORE_API_TOKEN".to_string(),
            super::TOKEN.to_string(),
        )]);
        let overrides = Overrides {
            data_dir: Some(data.to_owned()),
            listen: None,
        };
        let config = Config::from_parts(toml, &env, &overrides)
            .unwrap_or_else(|e| panic!("the test's daemon config is invalid ({e}):\n{toml}"));
        Teardown::new(data, &config)
    }

    /// The data folder is left damaged on purpose: skip the invariants.
    pub fn accept_damage(&mut self, why: &'static str) {
        self.damage = Some(why);
    }

    /// Nothing to check: the test failed already (its own message is the one
    /// to read, and a second panic while unwinding would abort), or the
    /// checks ran.
    pub fn skip(&self) -> bool {
        self.done || std::thread::panicking()
    }

    /// With the daemon still running: waits until its MySQL outbox is empty.
    pub fn outbox_drained(&self) -> Result<(), String> {
        if !self.mirror || !self.data.join("index.sqlite3").exists() {
            return Ok(());
        }
        if poll_blocking(DRAIN_LIMIT, || outbox_len(&self.data) == 0) {
            Ok(())
        } else {
            Err(format!(
                "teardown: the MySQL outbox of {} still holds {} entries after {DRAIN_LIMIT:?}",
                self.data.display(),
                outbox_len(&self.data)
            ))
        }
    }

    /// With the daemon stopped (or killed): the invariants, as one message.
    pub fn at_rest(&mut self) -> Result<(), String> {
        self.done = true;
        if let Some(why) = self.damage {
            eprintln!(
                "teardown: invariants of {} not checked: {why}",
                self.data.display()
            );
            return Ok(());
        }
        if !self.data.join("index.sqlite3").exists() {
            return Ok(());
        }
        let problems = match &self.s3 {
            Some(store) => super::fixtures::s3_consistency_problems(&self.data, store),
            None => consistency_problems(&self.data, self.archive.as_deref()),
        };
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "teardown: data folder {} breaks storage-layout.md's invariants:\n  {}",
                self.data.display(),
                problems.join("\n  ")
            ))
        }
    }
}
