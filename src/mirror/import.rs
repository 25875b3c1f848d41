//! `media-store import`: adopts the files of a chat deployment that stored
//! media before media-store (storage-layout.md, "MySQL mirror", M6).
//!
//! For each `media_files` row media-store does not own, in id order:
//! 1. mark the id as being adopted in MySQL (`media_store_rows.adopting`): the
//!    mirror may now overwrite the row, but never delete it;
//! 2. the index already has that id from an earlier, interrupted import (same
//!    uploader and time): go to 5;
//! 3. fetch the bytes from `file_url`: a path under `--from-root` (confined by
//!    the kernel, see `store::external`), or an http(s) URL on an
//!    `--allow-host` host (redirects only to allowed hosts, a timeout, the
//!    upload policy's size limit);
//! 4. store them through the upload path (`media::MediaService::adopt`: type
//!    sniffing, policy, write protocol) as a media row with the row's own id
//!    and upload time; on failure, drop the mark of step 1;
//! 5. queue the id in the outbox: the mirror rewrites the row with the index's
//!    values (`file_url` becomes media-store's URL) and, in the same MySQL
//!    transaction, makes it media-store's (`adopting = 0`).
//!
//! The mark comes first so that the trigger's outbox entry for the new media
//! row is not skipped as a collision by a running daemon's mirror; it never
//! allows a delete, so a crash anywhere leaves the backend's row in place, and
//! the next run (which lists rows still being adopted) finishes the job. Rows
//! already media-store's are not listed again, so running import twice
//! changes nothing.
//! It may run while the daemon runs: both use SQLite's write lock and the
//! blob store's protocol, as `media-store gc` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql::Conn;
use serde::Serialize;

use super::mysql::{self as my, ForeignRow};
use super::{MysqlConfig, worker};
use crate::clock::Clock;
use crate::media::{Adoption, MediaService, UploadMeta};
use crate::store::external::ExternalRoot;

/// What the operator allows import to read.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Local `file_url`s are read below this folder, never outside it.
    pub from_root: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) that http(s) `file_url`s may name.
    pub allow_hosts: Vec<String>,
    /// Check every row's source, store nothing, change nothing.
    pub dry_run: bool,
    /// Longest time one http fetch may take, body included.
    pub fetch_timeout: Duration,
}

/// A row that could not be adopted, and why.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Failure {
    pub id: i64,
    pub file_url: Option<String>,
    pub reason: String,
}

/// What import did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Rows of `media_files` that media-store did not own when import began.
    pub rows: u64,
    /// Ids stored and marked as media-store's now (dry run: would be).
    pub adopted: Vec<i64>,
    /// Ids whose content was already stored (a duplicate of another file).
    pub deduplicated: u64,
    /// Ids an earlier, interrupted import had stored: only marked now.
    pub resumed: Vec<i64>,
    pub failed: Vec<Failure>,
    /// "sent" (this command wrote them to MySQL), "queued" (a running daemon
    /// holds the mirror and will), or "none".
    pub mirror: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("no MySQL configured: set mysql.url (MEDIA_STORE_MYSQL_URL)")]
    NoMysql,
    #[error("cannot connect to MySQL at {place}")]
    Connect {
        place: String,
        #[source]
        source: super::MirrorError,
    },
    #[error(transparent)]
    Mirror(#[from] super::MirrorError),
    #[error("--from-root {}", .0.display())]
    Root(PathBuf, #[source] crate::store::external::ExternalError),
    #[error("cannot build the HTTP client")]
    Http(#[source] reqwest::Error),
    #[error("index request failed")]
    Index(#[from] crate::index::IndexError),
}

/// Rows read from MySQL per round.
const CHUNK: usize = 500;

/// Where a `file_url` points.
#[derive(Debug, PartialEq)]
enum Source {
    /// Relative to `--from-root`.
    Local(PathBuf),
    Http(reqwest::Url),
}

/// Interprets a `file_url`: `http(s)://…` is fetched; `file://…` and plain
/// paths are local. An absolute path under the root is taken as it is; any
/// other absolute path (a web path such as `/uploads/a.png`) is taken relative
/// to the root. `..` is refused later, by the confined open.
fn source_of(file_url: &str, root: Option<&Path>) -> Result<Source, String> {
    let trimmed = file_url.trim();
    if trimmed.is_empty() {
        return Err("empty file_url".into());
    }
    let lower = trimmed.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let url = reqwest::Url::parse(trimmed).map_err(|e| format!("not a valid URL: {e}"))?;
        return Ok(Source::Http(url));
    }
    let path = if lower.starts_with("file://") {
        let url = reqwest::Url::parse(trimmed).map_err(|e| format!("not a valid URL: {e}"))?;
        url.to_file_path()
            .map_err(|()| "a file:// URL that names no local path".to_string())?
    } else if trimmed.contains("://") {
        return Err("unsupported URL scheme (http, https, file or a path)".into());
    } else {
        PathBuf::from(trimmed)
    };
    let Some(root) = root else {
        return Err("a local path: pass --from-root DIR to import local files".into());
    };
    let relative = if path.is_absolute() {
        match path.strip_prefix(root) {
            Ok(rest) => rest.to_owned(),
            Err(_) => path.strip_prefix("/").unwrap_or(&path).to_owned(),
        }
    } else {
        path
    };
    Ok(Source::Local(relative))
}

fn host_allowed(url: &reqwest::Url, allowed: &[String]) -> bool {
    if !matches!(url.scheme(), "http" | "https") {
        return false;
    }
    let Some(host) = url.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let with_port = url.port_or_known_default().map(|p| format!("{host}:{p}"));
    allowed.iter().any(|a| {
        let a = a.to_ascii_lowercase();
        a == host || Some(&a) == with_port.as_ref()
    })
}

fn chain(e: impl Into<anyhow::Error>) -> String {
    format!("{:#}", e.into())
}

/// The file name part of a `file_url`, kept as the media's original name.
fn name_of(file_url: &str) -> Option<String> {
    let path = file_url.split(['?', '#']).next().unwrap_or(file_url);
    let name = path.rsplit('/').next()?;
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!name.is_empty() && name.len() <= 255).then_some(name)
}

enum Outcome {
    Adopted { deduplicated: bool },
    Resumed,
}

struct Importer<'a> {
    media: &'a MediaService,
    opts: &'a ImportOptions,
    root: Option<ExternalRoot>,
    client: reqwest::Client,
}

impl Importer<'_> {
    /// What the index says about the row's id: already stored by an earlier
    /// run (`Resumed`), free (`None`), or a collision (an error). Checked
    /// before the row is marked, so a collision is never marked.
    async fn check(&self, row: &ForeignRow) -> Result<Option<Outcome>, String> {
        let uploader_id = row.uploader_id.ok_or("uploader_id is NULL")?;
        let at_s = row.uploaded_at_s.ok_or("uploaded_at is NULL")?;
        row.file_url.as_deref().ok_or("file_url is NULL")?;
        let id = row.id;
        if id <= 0 {
            return Err("not a valid media id".into());
        }
        let existing = self
            .media
            .index()
            .read(move |r| r.get_media(id))
            .await
            .map_err(chain)?;
        match existing {
            None => Ok(None),
            // Stored by an earlier run that stopped before the mirror wrote it.
            Some(m)
                if m.uploader_id == uploader_id && m.uploaded_at_ms.div_euclid(1000) == at_s =>
            {
                Ok(Some(Outcome::Resumed))
            }
            Some(m) => Err(format!(
                "media-store already has a different media {id} (uploader {}): an id collision; this row stays the chat backend's",
                m.uploader_id
            )),
        }
    }

    /// Fetches the row's file and stores it under the row's id and time
    /// (dry run: only checks that the source is there and allowed).
    async fn store(&self, row: &ForeignRow) -> Result<Outcome, String> {
        let uploader_id = row.uploader_id.ok_or("uploader_id is NULL")?;
        let at_s = row.uploaded_at_s.ok_or("uploaded_at is NULL")?;
        let file_url = row.file_url.as_deref().ok_or("file_url is NULL")?;
        let id = row.id;
        let adoption = Adoption {
            id,
            uploaded_at_ms: at_s * 1000,
        };
        let meta = UploadMeta {
            uploader_id,
            original_name: name_of(file_url),
            declared_len: None,
            claimed_hash: None,
        };
        match source_of(file_url, self.opts.from_root.as_deref())? {
            Source::Local(relative) => {
                let root = self.root.as_ref().ok_or("--from-root is not set")?;
                let file = root.open_file(&relative).map_err(chain)?;
                if self.opts.dry_run {
                    return Ok(Outcome::Adopted {
                        deduplicated: false,
                    });
                }
                let meta = UploadMeta {
                    declared_len: Some(file.len()),
                    ..meta
                };
                let ingested = self
                    .media
                    .adopt(adoption, meta, file.into_stream())
                    .await
                    .map_err(chain)?;
                Ok(Outcome::Adopted {
                    deduplicated: ingested.deduplicated,
                })
            }
            Source::Http(url) => {
                if !host_allowed(&url, &self.opts.allow_hosts) {
                    return Err(format!(
                        "host {} is not allowed (pass --allow-host)",
                        url.host_str().unwrap_or("?")
                    ));
                }
                if self.opts.dry_run {
                    return Ok(Outcome::Adopted {
                        deduplicated: false,
                    });
                }
                let resp = self
                    .client
                    .get(url)
                    .send()
                    .await
                    .map_err(|e| format!("fetch failed: {}", chain(e)))?;
                if !resp.status().is_success() {
                    return Err(format!("fetch failed: HTTP {}", resp.status()));
                }
                let meta = UploadMeta {
                    declared_len: resp.content_length(),
                    ..meta
                };
                let body = Box::pin(resp.bytes_stream());
                let ingested = self
                    .media
                    .adopt(adoption, meta, body)
                    .await
                    .map_err(chain)?;
                Ok(Outcome::Adopted {
                    deduplicated: ingested.deduplicated,
                })
            }
        }
    }
}

/// Runs the import against the configured MySQL and the index and blob store
/// behind `media`. Rows that cannot be adopted are reported, not fatal; an
/// error is returned only when MySQL or the index fail.
pub async fn run(
    media: &MediaService,
    cfg: &MysqlConfig,
    base_url: &str,
    opts: &ImportOptions,
    clock: &dyn Clock,
) -> Result<ImportReport, ImportError> {
    if !cfg.enabled() {
        return Err(ImportError::NoMysql);
    }
    let root = match &opts.from_root {
        Some(path) => {
            Some(ExternalRoot::open(path).map_err(|e| ImportError::Root(path.clone(), e))?)
        }
        None => None,
    };
    let allowed = opts.allow_hosts.clone();
    let client = reqwest::Client::builder()
        .timeout(opts.fetch_timeout)
        .connect_timeout(opts.fetch_timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if host_allowed(attempt.url(), &allowed) {
                attempt.follow()
            } else {
                attempt.error("redirected to a host that is not allowed")
            }
        }))
        .build()
        .map_err(ImportError::Http)?;
    let importer = Importer {
        media,
        opts,
        root,
        client,
    };
    let mysql_opts = my::opts(cfg)?;
    // The mysql crate is blocking: its calls run in block_in_place.
    use tokio::task::block_in_place as blocking;
    let mut conn: Conn =
        blocking(|| my::connect(&mysql_opts)).map_err(|source| ImportError::Connect {
            place: my::describe(&mysql_opts),
            source,
        })?;
    blocking(|| -> super::Result<()> {
        if cfg.auto_migrate && !opts.dry_run {
            my::migrate(&mut conn)?;
        } else {
            my::check_schema(&mut conn)?;
        }
        if !opts.dry_run {
            // Later uploads must not take the ids of rows not adopted.
            worker::raise_id_floor(media.index(), &mut conn, &my::describe(&mysql_opts))?;
        }
        Ok(())
    })?;

    let mut report = ImportReport {
        dry_run: opts.dry_run,
        mirror: "none",
        ..Default::default()
    };
    let mut from = i64::MIN;
    loop {
        let rows = blocking(|| my::foreign_rows_from(&mut conn, from, CHUNK))?;
        let Some(last) = rows.last().map(|r| r.id) else {
            break;
        };
        for row in &rows {
            report.rows += 1;
            let id = row.id;
            let outcome = match importer.check(row).await {
                Ok(Some(resumed)) => {
                    if !opts.dry_run {
                        blocking(|| my::mark_adopting(&mut conn, id))?;
                    }
                    Ok(resumed)
                }
                Ok(None) => {
                    if !opts.dry_run {
                        // Before the index has the id: from now on the mirror
                        // may overwrite this row (once the index has it), never
                        // delete it.
                        blocking(|| my::mark_adopting(&mut conn, id))?;
                    }
                    let stored = importer.store(row).await;
                    if stored.is_err() && !opts.dry_run {
                        blocking(|| my::unmark_adopting(&mut conn, id))?;
                    }
                    stored
                }
                Err(reason) => Err(reason),
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(reason) => {
                    tracing::warn!(media.id = row.id, %reason, "cannot adopt media_files row");
                    report.failed.push(Failure {
                        id: row.id,
                        file_url: row.file_url.clone(),
                        reason,
                    });
                    continue;
                }
            };
            match outcome {
                Outcome::Adopted { deduplicated } => {
                    report.adopted.push(row.id);
                    report.deduplicated += u64::from(deduplicated);
                }
                Outcome::Resumed => report.resumed.push(row.id),
            }
            if opts.dry_run {
                continue;
            }
            // Queued (the trigger also did, while the mirror is enabled) so the
            // mirror rewrites the row with the index's values, which completes
            // the adoption.
            let now = clock.now_ms();
            media
                .index()
                .write(move |ctx| ctx.outbox_enqueue(&[id], now))
                .await?;
            tracing::info!(media.id = id, "adopted media_files row");
        }
        from = last + 1;
    }
    let marked = !(report.adopted.is_empty() && report.resumed.is_empty());
    if marked && !opts.dry_run {
        report.mirror = blocking(|| -> super::Result<&'static str> {
            if my::try_lock_mirror(&mut conn)? {
                worker::drain_all(media.index(), &mut conn, cfg.batch_size, base_url)?;
                Ok("sent")
            } else {
                Ok("queued")
            }
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_map_to_confined_paths_or_urls() {
        let root = Path::new("/srv/chat");
        assert_eq!(
            source_of("/srv/chat/uploads/a.png", Some(root)),
            Ok(Source::Local("uploads/a.png".into()))
        );
        assert_eq!(
            source_of("/uploads/a.png", Some(root)),
            Ok(Source::Local("uploads/a.png".into()))
        );
        assert_eq!(
            source_of("uploads/a.png", Some(root)),
            Ok(Source::Local("uploads/a.png".into()))
        );
        assert_eq!(
            source_of("file:///srv/chat/a%20b.png", Some(root)),
            Ok(Source::Local("a b.png".into()))
        );
        assert!(source_of("uploads/a.png", None).is_err());
        assert!(source_of("ftp://x/y", Some(root)).is_err());
        assert!(matches!(
            source_of("https://cdn.example/a.png", None),
            Ok(Source::Http(_))
        ));
    }

    #[test]
    fn only_allowed_hosts_and_ports() {
        let allowed = vec!["cdn.example".to_string(), "127.0.0.1:8080".to_string()];
        let ok = |u: &str| host_allowed(&reqwest::Url::parse(u).unwrap(), &allowed);
        assert!(ok("https://cdn.example/a"));
        assert!(ok("http://CDN.example:81/a"));
        assert!(ok("http://127.0.0.1:8080/a"));
        assert!(!ok("http://127.0.0.1:8081/a"));
        assert!(!ok("https://evil.example/a"));
        assert!(!ok("ftp://cdn.example/a"));
    }

    #[test]
    fn original_names_come_from_the_last_segment() {
        assert_eq!(name_of("/u/a%20b.png?x=1").as_deref(), Some("a b.png"));
        assert_eq!(name_of("/u/"), None);
    }
}
