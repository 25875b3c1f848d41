//! Retention: which media rows expire (storage-layout.md, "Retention").
//!
//! Two rules, both from `[retention]`: uploads never attached to a message
//! expire `orphan_ttl` after upload; media of a family with a maximum age
//! expire after that many days, references or not. Before deleting, each batch
//! of candidates is shown to the configured [`ExternalReferences`]; whatever it
//! names is kept, and an error from it stops retention with nothing deleted.
//! Expired rows are deleted through `index::media::delete_media` (the row and
//! its blob reference together); their blobs then wait for GC like any other.

use std::time::Duration;

use serde::Serialize;

use super::gc::GcOptions;
use super::{ExternalReferences, RetentionConfig};
use crate::index::{Maintenance, RetentionRule as Rule};

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RetentionSummary {
    /// Media rows deleted (or that would be, in a dry run) as orphans.
    pub orphans_expired: u64,
    /// Media rows deleted (or that would be) for passing their family's maximum age.
    pub aged_expired: u64,
    /// Candidates kept because the external reference source named them.
    pub kept_by_external: u64,
    /// In a dry run: the ids that would be deleted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub would_delete: Vec<i64>,
}

/// Applies the retention rules as of `now_ms`. Each batch of at most `batch`
/// rows is deleted in its own short `BEGIN IMMEDIATE` transaction, which
/// re-checks the rule, so the daemon's uploads keep flowing in between.
pub fn expire(
    index: &mut Maintenance,
    cfg: &RetentionConfig,
    opts: &GcOptions,
    external: Option<&dyn ExternalReferences>,
) -> anyhow::Result<RetentionSummary> {
    let (now_ms, batch, dry_run) = (opts.now_ms, opts.batch, opts.dry_run);
    let mut summary = RetentionSummary::default();
    let mut rules = vec![(Rule::Orphan, cfg.orphan_ttl)];
    for (family, days) in &cfg.max_age_days {
        rules.push((
            Rule::MaxAge(family.clone()),
            Duration::from_secs(days.saturating_mul(86_400)),
        ));
    }
    for (rule, age) in rules {
        let cutoff = now_ms.saturating_sub(age.as_millis().min(i64::MAX as u128) as i64);
        let Some(max_id) = index.reader().last_id_before(cutoff)? else {
            continue;
        };
        let mut after = 0i64;
        loop {
            let ids = index
                .reader()
                .expiry_candidates(&rule, after, max_id, batch)?;
            let Some(&last) = ids.last() else { break };
            after = last;
            let kept = match external {
                Some(ext) => ext
                    .referenced(&ids)
                    .map_err(|e| e.context("external reference check failed; deleted none"))?,
                None => Vec::new(),
            };
            summary.kept_by_external += kept.len() as u64;
            let doomed: Vec<i64> = ids.into_iter().filter(|id| !kept.contains(id)).collect();
            let deleted = if dry_run {
                summary.would_delete.extend(&doomed);
                doomed.len() as u64
            } else if doomed.is_empty() {
                0
            } else {
                super::gc::in_write_tx(index, opts, |tx| {
                    // Asked again right before deleting, inside the deleting
                    // transaction: a message that came to reference one of
                    // them since the first answer keeps it. What remains is
                    // the window between MySQL's answer and this commit
                    // (docs/lifecycle.md, "Retention").
                    let doomed = match external {
                        Some(ext) => {
                            let now_kept = ext.referenced(&doomed).map_err(|e| {
                                e.context("external reference check failed; deleted none")
                            })?;
                            doomed
                                .iter()
                                .copied()
                                .filter(|id| !now_kept.contains(id))
                                .collect()
                        }
                        None => doomed.clone(),
                    };
                    Ok(tx.expire_media(&rule, &doomed, cutoff, now_ms)?)
                })?
            };
            match rule {
                Rule::Orphan => summary.orphans_expired += deleted,
                Rule::MaxAge(_) => summary.aged_expired += deleted,
            }
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::NewMedia;
    use std::collections::BTreeMap;

    /// Test double for the MySQL reference source: names a fixed set of ids,
    /// or fails.
    struct Fixed(Result<Vec<i64>, ()>);
    impl ExternalReferences for Fixed {
        fn referenced(&self, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
            match &self.0 {
                Ok(named) => Ok(ids.iter().copied().filter(|i| named.contains(i)).collect()),
                Err(()) => anyhow::bail!("MySQL is down"),
            }
        }
    }

    fn setup() -> (tempfile::TempDir, Maintenance) {
        let dir = tempfile::tempdir().unwrap();
        let c = Maintenance::create(dir.path()).unwrap();
        (dir, c)
    }

    const DAY: i64 = 86_400_000;

    fn upload(c: &mut Maintenance, t: &str, at: i64, seed: u64) -> i64 {
        let content = seed.to_le_bytes();
        let hash = blake3::hash(&content);
        c.immediate(|tx| {
            tx.add_blob_ref(&hash, 8, at)?;
            tx.insert_media(
                &NewMedia {
                    uploader_id: 1,
                    file_type: t.into(),
                    hash,
                    size: 8,
                    original_name: None,
                },
                at,
            )
        })
        .unwrap()
        .id
    }

    fn attach(c: &mut Maintenance, message: i64, media: i64) {
        c.immediate(|tx| tx.attach(message, media, 1, 0)).unwrap();
    }

    fn opts(now_ms: i64, batch: usize, dry_run: bool) -> GcOptions {
        GcOptions {
            batch,
            dry_run,
            pace: false,
            ..GcOptions::from_config(&Default::default(), &Default::default(), now_ms)
        }
    }

    fn exists(c: &Maintenance, id: i64) -> bool {
        c.reader().get_media(id).unwrap().is_some()
    }

    fn cfg(max_age: &[(&str, u64)]) -> RetentionConfig {
        RetentionConfig {
            max_age_days: max_age
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            ..Default::default()
        }
    }

    #[test]
    fn orphans_expire_after_the_ttl_and_attached_media_stay() {
        let (_d, mut c) = setup();
        let old_orphan = upload(&mut c, "image/png", 0, 1);
        let old_attached = upload(&mut c, "image/png", 0, 2);
        let young_orphan = upload(&mut c, "image/png", 10 * DAY, 3);
        attach(&mut c, 1, old_attached);
        let s = expire(&mut c, &cfg(&[]), &opts(10 * DAY + 1000, 1, false), None).unwrap();
        assert_eq!(s.orphans_expired, 1);
        assert!(!exists(&c, old_orphan));
        assert!(exists(&c, old_attached));
        assert!(exists(&c, young_orphan));
        // Its blob's count dropped to 0 with a tombstone: garbage for GC.
        let state = c
            .reader()
            .blob_state(&blake3::hash(&1u64.to_le_bytes()))
            .unwrap();
        assert_eq!(state, Some((0, Some(10 * DAY + 1000))));
    }

    #[test]
    fn max_age_applies_per_family_even_to_attached_media() {
        let (_d, mut c) = setup();
        let video = upload(&mut c, "video/mp4", 0, 1);
        let image = upload(&mut c, "image/png", 0, 2);
        attach(&mut c, 1, video);
        attach(&mut c, 1, image);
        let s = expire(
            &mut c,
            &cfg(&[("video", 365)]),
            &opts(366 * DAY, 10, false),
            None,
        )
        .unwrap();
        assert_eq!((s.aged_expired, s.orphans_expired), (1, 0));
        assert!(!exists(&c, video));
        assert!(exists(&c, image));
        let (_, refs) = c.reader().message_media(1).unwrap();
        assert_eq!(refs.len(), 1, "the expired video's reference went with it");
    }

    #[test]
    fn external_references_keep_what_they_name() {
        let (_d, mut c) = setup();
        let ids: Vec<i64> = (0..5).map(|i| upload(&mut c, "image/png", 0, i)).collect();
        let ext = Fixed(Ok(vec![ids[1], ids[3]]));
        let s = expire(&mut c, &cfg(&[]), &opts(2 * DAY, 2, false), Some(&ext)).unwrap();
        assert_eq!((s.orphans_expired, s.kept_by_external), (3, 2));
        let left: Vec<bool> = ids.iter().map(|&i| exists(&c, i)).collect();
        assert_eq!(left, vec![false, true, false, true, false]);
    }

    #[test]
    fn an_external_error_deletes_nothing() {
        let (_d, mut c) = setup();
        let ids: Vec<i64> = (0..3).map(|i| upload(&mut c, "image/png", 0, i)).collect();
        let err = expire(
            &mut c,
            &cfg(&[]),
            &opts(2 * DAY, 10, false),
            Some(&Fixed(Err(()))),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("MySQL is down"), "{err:#}");
        assert!(ids.iter().all(|&i| exists(&c, i)));
    }

    #[test]
    fn dry_run_lists_without_deleting() {
        let (_d, mut c) = setup();
        let a = upload(&mut c, "image/png", 0, 1);
        let s = expire(&mut c, &cfg(&[]), &opts(2 * DAY, 10, true), None).unwrap();
        assert_eq!(s.would_delete, vec![a]);
        assert!(exists(&c, a));
    }

    /// The chat backend answers "not referenced" first, then a message comes
    /// to reference the media before the delete: the second question, asked
    /// inside the deleting transaction, keeps it.
    #[test]
    fn external_references_are_asked_again_right_before_deleting() {
        struct ReferencedOnSecondAsk(std::sync::atomic::AtomicU32);
        impl ExternalReferences for ReferencedOnSecondAsk {
            fn referenced(&self, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
                let asked = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(if asked == 0 { Vec::new() } else { ids.to_vec() })
            }
        }
        let (_d, mut c) = setup();
        let id = upload(&mut c, "image/png", 0, 1);
        let ext = ReferencedOnSecondAsk(Default::default());
        let s = expire(&mut c, &cfg(&[]), &opts(2 * DAY, 10, false), Some(&ext)).unwrap();
        assert_eq!(s.orphans_expired, 0);
        assert!(exists(&c, id));
        assert_eq!(ext.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
