//! Test data and data-folder inspection.

use std::path::{Path, PathBuf};

/// A real media file from `tests/data` (see its MANIFEST.md).
pub fn testdata(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("missing test file {}: {e}", path.display()))
}

/// A valid PNG whose bytes are unique to `seed` (a text chunk carries it).
pub fn unique_png(seed: u64) -> Vec<u8> {
    let mut png = testdata("png/gray1.png");
    // Insert a tEXt chunk after IHDR (8-byte signature + 25-byte IHDR chunk).
    let text = format!("seed\0{seed}");
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&(text.len() as u32).to_be_bytes());
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(text.as_bytes());
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    png.splice(33..33, chunk);
    png
}

/// An MP4 of `len` bytes: a real `ftyp` box, then deterministic filler.
pub fn fake_mp4(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&[0, 0, 0, 0x18]);
    v.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Every file under `blobs/`.
pub fn blob_files(data: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("blobs"), &mut out);
    out.sort();
    out
}

/// Where the blob of `content` is (or would be) stored under `data`.
pub fn blob_path(data: &Path, content: &[u8]) -> PathBuf {
    data.join("blobs")
        .join(media_store::store::blob_relative_path(&blake3::hash(
            content,
        )))
}

/// How many files the staging folder `tmp/` holds.
pub fn tmp_files(data: &Path) -> usize {
    std::fs::read_dir(data.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Bytes in the staging folder `tmp/`: how much of the uploads in flight has
/// reached the disk.
pub fn staging_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("tmp"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Changes waiting in the MySQL mirror's outbox.
pub fn outbox_len(data: &Path) -> i64 {
    index(data)
        .query_row("SELECT count(*) FROM mysql_outbox", [], |r| r.get(0))
        .unwrap()
}

/// Opens the index read-only, as an operator's sqlite3 shell would.
pub fn index(data: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open_with_flags(
        data.join("index.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    c
}

pub fn refcount(data: &Path, blake3_hex: &str) -> Option<i64> {
    let hash = blake3::Hash::from_hex(blake3_hex).unwrap();
    index(data)
        .query_row(
            "SELECT refcount FROM blobs WHERE hash = ?1",
            [hash.as_bytes()],
            |r| r.get(0),
        )
        .ok()
}

/// The invariants of storage-layout.md that must hold in any data folder at rest:
/// every media row's blob exists with the right size and hash, every refcount
/// equals its number of media rows, and no file under blobs/ is partial.
pub fn assert_consistent(data: &Path) {
    assert_consistent_with_archive(data, None)
}

/// The bytes of a stored blob, from the primary root or else the archive root
/// (the order a reader uses: a move unlinks the primary copy last).
pub fn read_stored_blob(
    data: &Path,
    archive: Option<&Path>,
    hash: &blake3::Hash,
) -> std::io::Result<Vec<u8>> {
    let relative = media_store::store::blob_relative_path(hash);
    match std::fs::read(data.join("blobs").join(&relative)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && archive.is_some() => {
            std::fs::read(archive.unwrap().join("blobs").join(&relative))
        }
        other => other,
    }
}

/// [`assert_consistent`] for a data folder with an archive root.
pub fn assert_consistent_with_archive(data: &Path, archive: Option<&Path>) {
    let problems = consistency_problems(data, archive);
    assert!(
        problems.is_empty(),
        "data folder {} breaks storage-layout.md's invariants:\n  {}",
        data.display(),
        problems.join("\n  ")
    );
}

/// [`assert_consistent_with_archive`] with the index read through `idx` (the
/// power-cut tests read a copy: SQLite in the test process must not map files
/// of the file system that the same process serves).
pub fn assert_consistent_index(idx: &rusqlite::Connection, data: &Path, archive: Option<&Path>) {
    let problems = consistency_problems_in(idx, data, archive);
    assert!(
        problems.is_empty(),
        "data folder {} breaks storage-layout.md's invariants:\n  {}",
        data.display(),
        problems.join("\n  ")
    );
}

/// Every broken invariant of [`assert_consistent_with_archive`], described
/// (all of them, not just the first).
/// storage-layout.md's invariants for a store on S3 ("S3"): counts match the
/// rows, every referenced blob's object is in the bucket and hashes right
/// (read through the store, which streams and hashes it), and no upload pin
/// or GC claim is left once the daemon has stopped.
pub fn s3_consistency_problems(
    data: &Path,
    config: &media_store::store::StoreConfig,
) -> Vec<String> {
    // On a thread of its own: the store's calls block, and this may run from
    // a test's async code (a handle dropped there).
    std::thread::scope(|s| s.spawn(|| s3_problems(data, config)).join().unwrap())
}

fn s3_problems(data: &Path, config: &media_store::store::StoreConfig) -> Vec<String> {
    let idx = index(data);
    let mut problems = Vec::new();
    // `store.backend = "local"` with an S3 config: an archive bucket.
    let archive_bucket = config.backend == media_store::store::Backend::Local;
    let store = media_store::store::BlobStore::open_existing(data)
        .and_then(|s| s.with_backend(config))
        .and_then(|s| s.with_archive_bucket(archive_bucket.then_some(config)))
        .expect("the S3 store opens at teardown");
    type Row = ([u8; 32], u64, i64, i64, Option<i64>);
    let rows: Vec<Row> = idx
        .prepare(
            "SELECT b.hash, b.size, b.refcount,
                    (SELECT count(*) FROM media m WHERE m.hash = b.hash)
                  + (SELECT count(*) FROM renditions r WHERE r.hash = b.hash),
                    b.gc_claimed_at
             FROM blobs b",
        )
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (hash, size, rc, used, claimed) in rows {
        let hash = blake3::Hash::from_bytes(hash);
        let hex = hash.to_hex();
        if rc != used {
            problems.push(format!("refcount of {hex} is {rc} but {used} rows use it"));
        }
        if claimed.is_some() {
            problems.push(format!("blob {hex} is still claimed by GC"));
        }
        let corrupt: bool = idx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM media WHERE hash = ?1 AND corrupt_since IS NOT NULL)",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        if rc > 0 && !corrupt {
            let (verdict, _) = store.verify(&hash, size);
            if verdict != media_store::store::Verdict::Ok {
                problems.push(format!("blob {hex}: its object is {verdict:?}"));
            }
        }
    }
    let pins: i64 = idx
        .query_row("SELECT count(*) FROM blob_pins", [], |r| r.get(0))
        .unwrap();
    if pins > 0 {
        problems.push(format!("{pins} upload pins left after the daemon stopped"));
    }
    // I1: whatever is under the local blobs/ is whole, known or not.
    problems.extend(partial_blob_files(blob_files(data)));
    problems
}

/// The files among `files` (under a blobs/) whose bytes do not hash to their name.
fn partial_blob_files(files: impl IntoIterator<Item = std::path::PathBuf>) -> Vec<String> {
    let mut problems = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let bytes = std::fs::read(&file).unwrap();
        if blake3::hash(&bytes).to_hex().as_str() != name {
            problems.push(format!(
                "partial or corrupt file under blobs/: {}",
                file.display()
            ));
        }
    }
    problems
}

pub fn consistency_problems(data: &Path, archive: Option<&Path>) -> Vec<String> {
    consistency_problems_in(&index(data), data, archive)
}

fn consistency_problems_in(
    idx: &rusqlite::Connection,
    data: &Path,
    archive: Option<&Path>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut stmt = idx
        .prepare(
            "SELECT b.hash, b.size, b.refcount,
                    (SELECT count(*) FROM media m WHERE m.hash = b.hash)
                  + (SELECT count(*) FROM renditions r WHERE r.hash = b.hash)
             FROM blobs b",
        )
        .unwrap();
    let rows: Vec<([u8; 32], u64, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (hash, size, rc, media) in rows {
        let hash = blake3::Hash::from_bytes(hash);
        let hex = hash.to_hex();
        if rc != media {
            problems.push(format!(
                "refcount of {hex} is {rc} but {media} media and rendition rows use it"
            ));
        }
        if rc > 0 {
            match read_stored_blob(data, archive, &hash) {
                Err(e) => problems.push(format!("blob {hex} missing: {e}")),
                Ok(bytes) if bytes.len() as u64 != size => problems.push(format!(
                    "blob {hex} is partial: {} bytes, its row says {size}",
                    bytes.len()
                )),
                Ok(bytes) if blake3::hash(&bytes) != hash => {
                    problems.push(format!("blob {hex} is corrupt"))
                }
                Ok(_) => {}
            }
        }
    }
    let orphan_rows: i64 = idx
        .query_row(
            "SELECT count(*) FROM media WHERE hash NOT IN (SELECT hash FROM blobs)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if orphan_rows != 0 {
        problems.push(format!("{orphan_rows} media rows without a blob row"));
    }
    // R1–R3: a rendition row's source and blob rows exist, its blob is not its
    // own source, and a source with a live count keeps its renditions alive.
    let bad_renditions: Vec<(String, String)> = idx
        .prepare(
            "SELECT hex(source_hash), variant FROM renditions r
             WHERE source_hash NOT IN (SELECT hash FROM blobs)
                OR (hash IS NOT NULL AND hash NOT IN (SELECT hash FROM blobs WHERE refcount > 0))
                OR hash = source_hash",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (source, variant) in bad_renditions {
        problems.push(format!(
            "rendition {variant} of {source} has no source row, a dead blob, or is its own source"
        ));
    }
    // I1 and A1: whatever is under either blobs/ is whole, whether known or not.
    problems.extend(partial_blob_files(
        blob_files(data)
            .into_iter()
            .chain(archive.map(blob_files).unwrap_or_default()),
    ));
    problems
}
