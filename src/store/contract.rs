//! The blob-store contract, as tests every backend must pass (issue #9,
//! point 6): the local disk (`store::tests`) and S3 against a real Garage
//! cluster (`tests/it/s3.rs`, hence public). Each check states a promise of
//! the port's documentation in `store/mod.rs`.

use futures_util::StreamExt as _;

use super::{BlobEntry, BlobStore, Tier, Unlinked, Verdict};

/// Stages, syncs, installs and makes durable `content` (for a network
/// store: puts it); returns its hash.
pub fn put(store: &BlobStore, content: &[u8]) -> blake3::Hash {
    let mut staged = store.stage().unwrap();
    staged.write_chunk(content).unwrap();
    let hash = staged.hash();
    if store.is_remote() {
        store.put(&staged).unwrap();
        return hash;
    }
    staged.sync().unwrap();
    let pending = store.install(staged, &hash).unwrap();
    store.make_durable(pending).unwrap();
    hash
}

fn listed(store: &BlobStore) -> Vec<blake3::Hash> {
    let mut out = Vec::new();
    store
        .walk(
            Tier::Primary,
            || {},
            |batch| -> super::Result<()> {
                for (entry, modified) in batch {
                    if let BlobEntry::Blob(h) = entry {
                        assert!(modified.is_some(), "a listed blob has a modification time");
                        out.push(h);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    out
}

/// Runs every check against `store` (an empty store).
pub fn run(store: &BlobStore) {
    staging_hashes_what_it_writes_and_a_dropped_stage_leaves_nothing(store);
    install_stat_read_range_list_delete(store);
    verify_tells_whole_from_missing(store);
}

fn staging_hashes_what_it_writes_and_a_dropped_stage_leaves_nothing(store: &BlobStore) {
    let mut staged = store.stage().unwrap();
    staged.write_chunk(b"hello ").unwrap();
    staged.write_chunks(&[b"wo", b"", b"rld"]).unwrap();
    assert_eq!(staged.hash(), blake3::hash(b"hello world"));
    assert_eq!(staged.len(), 11);
    drop(staged);
    assert!(!store.contains(&blake3::hash(b"hello world")));
    assert!(listed(store).is_empty(), "a dropped stage is never a blob");
}

fn install_stat_read_range_list_delete(store: &BlobStore) {
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let hash = put(store, &content);
    assert!(store.contains(&hash));
    assert_eq!(
        store.locate(&hash),
        Some(Tier::Primary),
        "new blobs are primary"
    );
    assert_eq!(
        store.read_whole(&hash, content.len() as u64).unwrap(),
        content
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // Opened outside the runtime: opening is blocking, like every store call.
    let mut stream = store.open_range(&hash, 1000, 70_000, 16 * 1024).unwrap();
    let range = rt.block_on(async {
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        got
    });
    assert_eq!(range, &content[1000..71_000]);
    assert_eq!(listed(store), vec![hash]);
    // Installing the same content again is harmless (same bytes, same name).
    assert_eq!(put(store, &content), hash);
    assert_eq!(store.delete(&hash).unwrap(), 1);
    assert!(!store.contains(&hash));
    assert!(store.read_whole(&hash, 1).is_err());
    assert_eq!(store.delete(&hash).unwrap(), 0, "deleting twice is fine");
    assert_eq!(
        store.delete_unknown(Tier::Primary, &hash).unwrap(),
        Unlinked::Absent
    );
    assert!(listed(store).is_empty());
}

fn verify_tells_whole_from_missing(store: &BlobStore) {
    let hash = put(store, b"verified");
    assert_eq!(store.verify(&hash, 8), (Verdict::Ok, Some(Tier::Primary)));
    assert_eq!(store.verify(&hash, 9).0, Verdict::Corrupt, "wrong size");
    let absent = blake3::hash(b"absent");
    assert_eq!(store.verify(&absent, 6), (Verdict::Missing, None));
    store.delete(&hash).unwrap();
}
