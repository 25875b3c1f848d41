//! The index contract, as tests every index implementation must pass (issue
//! #9, point 6): SQLite today (`index::tests`), a MySQL-backed index if one
//! is ever added. Each check states a promise the lifecycle and upload code
//! rely on (storage-layout.md, I3–I6 and "Garbage collection").

use super::{Index, Maintenance, NewMedia};

fn new_media(uploader_id: i64, content: &[u8]) -> NewMedia {
    NewMedia {
        uploader_id,
        file_type: "image/png".into(),
        hash: blake3::hash(content),
        size: content.len() as u64,
        original_name: Some("a.png".into()),
    }
}

/// Runs every check against `index` (an empty index) and `maintenance` (a
/// second connection to the same index, as `media-store gc` has).
pub(crate) async fn run(index: &Index, maintenance: &mut Maintenance) {
    commit_dedup_release_claim(index, maintenance).await;
    claims_never_take_a_revived_blob(index, maintenance).await;
}

/// Commit an upload; a second upload of the same content only counts; delete
/// both and the blob is GC's, once, under the write lock.
async fn commit_dedup_release_claim(index: &Index, maintenance: &mut Maintenance) {
    let upload = |content: &'static [u8], now: i64| {
        let index = index.clone();
        async move {
            index
                .write(move |ctx| {
                    let new = new_media(7, content);
                    ctx.add_blob_ref(&new.hash, new.size, now)?;
                    ctx.insert_media(&new, now)
                })
                .await
                .unwrap()
        }
    };
    let first = upload(b"contract", 1_000).await;
    let second = upload(b"contract", 2_000).await;
    assert!(second.id > first.id, "ids grow");
    let hash = first.hash;
    let state = index.read(move |r| r.blob_state(&hash)).await.unwrap();
    assert_eq!(state, Some((2, None)), "one blob row, counted twice");
    let got = index.read(move |r| r.get_media(first.id)).await.unwrap();
    assert_eq!(got.as_ref(), Some(&first));
    assert_eq!(
        index.read(|r| r.counted_usage(7)).await.unwrap(),
        (2, 16),
        "usage counts every upload"
    );

    for (id, now) in [(first.id, 3_000), (second.id, 4_000)] {
        let gone = index
            .write(move |ctx| ctx.delete_media(id, now))
            .await
            .unwrap();
        assert!(gone.is_some());
    }
    let state = index.read(move |r| r.blob_state(&hash)).await.unwrap();
    assert_eq!(state, Some((0, Some(4_000))), "count 0 stamps the time");
    let deleted_again = index
        .write(move |ctx| ctx.delete_media(first.id, 5_000))
        .await
        .unwrap();
    assert!(deleted_again.is_none(), "a delete is not repeated");

    // GC's claim: only past the grace cutoff, and only while still at 0.
    let early = maintenance
        .reader()
        .zero_count_blobs(3_999, None, 10)
        .unwrap();
    assert!(early.is_empty(), "not claimable before its grace period");
    let claimed = maintenance
        .immediate(|tx| {
            let rows = tx.zero_count_blobs(4_000, None, 10)?;
            assert_eq!(rows.len(), 1);
            assert!(!tx.hash_in_use(&rows[0].hash)?);
            tx.forget_zero_count_blob(&rows[0].hash)
        })
        .unwrap();
    assert!(claimed);
    let state = index.read(move |r| r.blob_state(&hash)).await.unwrap();
    assert_eq!(state, None, "the row is forgotten");
}

/// An upload that revives a zero-count blob between GC's scan and its claim
/// keeps it: the claim re-checks under the write lock.
async fn claims_never_take_a_revived_blob(index: &Index, maintenance: &mut Maintenance) {
    let new = new_media(8, b"revived");
    let hash = new.hash;
    let row = {
        let new = new.clone();
        index
            .write(move |ctx| {
                ctx.add_blob_ref(&new.hash, new.size, 10)?;
                ctx.insert_media(&new, 10)
            })
            .await
            .unwrap()
    };
    index
        .write(move |ctx| ctx.delete_media(row.id, 20))
        .await
        .unwrap();
    let scanned = maintenance
        .reader()
        .zero_count_blobs(i64::MAX, None, 10)
        .unwrap();
    assert_eq!(scanned.len(), 1);
    // The revival lands between the scan and the claim.
    index
        .write(move |ctx| {
            ctx.add_blob_ref(&new.hash, new.size, 30)?;
            ctx.insert_media(&new, 30)
        })
        .await
        .unwrap();
    let claimed = maintenance
        .immediate(|tx| tx.forget_zero_count_blob(&hash))
        .unwrap();
    assert!(!claimed, "a revived blob is never claimed");
    let state = index.read(move |r| r.blob_state(&hash)).await.unwrap();
    assert_eq!(state, Some((1, None)));
}
