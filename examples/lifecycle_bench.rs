//! Helpers for `benches/lifecycle.sh` (run in release mode):
//!
//! - `gen-gc DATA N GARBAGE_PERMILLE GROUP_MESSAGES`: a data folder with N blobs
//!   (tiny files, written in parallel) whose index rows are inserted directly
//!   with SQL; GARBAGE_PERMILLE/1000 of them have count 0 since two days ago,
//!   the rest one media row each, GROUP_MESSAGES of which are carried by
//!   messages of group 1.
//! - `gen-scrub DATA COUNT SIZE`: COUNT random blobs of SIZE bytes, with rows.
//!
//! A benchmark fixture, not part of the service: it writes rows and blob
//! files directly (millions of them in seconds) where the daemon would go
//! through its index and blob-store ports one upload at a time.
//!
//! - `load BASE TOKEN STOP_FILE CONCURRENCY`: uploads small unique PNGs until
//!   STOP_FILE exists, then prints the count, failures and latency percentiles
//!   (of every request, failed ones included).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use rusqlite::params;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("gen-gc") => gen_gc(
            Path::new(&args[1]),
            args[2].parse()?,
            args[3].parse()?,
            args[4].parse()?,
        ),
        Some("gen-scrub") => gen_scrub(Path::new(&args[1]), args[2].parse()?, args[3].parse()?),
        Some("load") => load(
            &args[1],
            &args[2],
            PathBuf::from(&args[3]),
            args[4].parse()?,
        ),
        _ => anyhow::bail!("usage: gen-gc | gen-scrub | load (see the source)"),
    }
}

/// The layout of storage-layout.md, "Folders".
fn blob_path(data: &Path, hash: &blake3::Hash) -> PathBuf {
    let hex = hash.to_hex();
    data.join("blobs")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(hex.as_str())
}

/// The data folder's index, created and migrated by the daemon's own code.
fn open_index(data: &Path) -> anyhow::Result<rusqlite::Connection> {
    drop(media_store::index::Maintenance::create(data)?);
    Ok(rusqlite::Connection::open(media_store::index::path_in(
        data,
    ))?)
}

fn make_shards(data: &Path) -> anyhow::Result<()> {
    for a in 0..256 {
        for b in 0..256 {
            std::fs::create_dir_all(data.join(format!("blobs/{a:02x}/{b:02x}")))?;
        }
    }
    std::fs::create_dir_all(data.join("tmp"))?;
    Ok(())
}

fn now_ms() -> i64 {
    use media_store::clock::Clock as _;
    media_store::clock::SystemClock.now_ms()
}

fn gen_gc(data: &Path, n: u64, garbage_permille: u64, group_messages: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    make_shards(data)?;
    let content = |i: u64| {
        let mut c = i.to_le_bytes().to_vec();
        c.extend_from_slice(b"lc-bench");
        c
    };
    (0..n).into_par_iter().try_for_each(|i| {
        let c = content(i);
        std::fs::write(blob_path(data, &blake3::hash(&c)), &c)
    })?;
    eprintln!("wrote {n} files in {:?}", started.elapsed());
    let mut conn = open_index(data)?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    let tx = conn.transaction()?;
    let now = now_ms();
    let old = now - 2 * 86_400_000;
    {
        let mut blob = tx.prepare(
            "INSERT INTO blobs (hash, size, refcount, zero_since, created_at) VALUES (?1, 16, ?2, ?3, ?4)",
        )?;
        let mut media = tx.prepare(
            "INSERT INTO media (uploader_id, file_type, family, hash, size, original_name, uploaded_at)
             VALUES (?1, 'image/png', 'image', ?2, 16, NULL, ?3)",
        )?;
        let mut msg = tx.prepare(
            "INSERT INTO message_media (message_id, media_id, group_id, attached_at) VALUES (?1, ?2, 1, ?3)",
        )?;
        let mut messages = 0;
        for i in 0..n {
            let h = blake3::hash(&content(i));
            // Spread garbage evenly through the key space.
            if i % 1000 < garbage_permille {
                blob.execute(params![h.as_bytes(), 0, old, old])?;
            } else {
                blob.execute(params![h.as_bytes(), 1, Option::<i64>::None, old])?;
                media.execute(params![(i % 1000) as i64, h.as_bytes(), now])?;
                if messages < group_messages {
                    msg.execute(params![messages as i64, tx.last_insert_rowid(), old])?;
                    messages += 1;
                }
            }
        }
    }
    tx.commit()?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    eprintln!("generated {n} blobs in {:?}", started.elapsed());
    Ok(())
}

fn gen_scrub(data: &Path, count: u64, size: usize) -> anyhow::Result<()> {
    make_shards(data)?;
    let hashes: Vec<blake3::Hash> = (0..count)
        .into_par_iter()
        .map(|i| {
            let mut buf = vec![0u8; size];
            let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for chunk in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            let h = blake3::hash(&buf);
            std::fs::write(blob_path(data, &h), &buf).map(|()| h)
        })
        .collect::<Result<_, _>>()?;
    let mut conn = open_index(data)?;
    let tx = conn.transaction()?;
    let now = now_ms();
    for h in &hashes {
        tx.execute(
            "INSERT INTO blobs (hash, size, refcount, zero_since, created_at) VALUES (?1, ?2, 1, NULL, ?3)",
            params![h.as_bytes(), size as i64, now],
        )?;
        tx.execute(
            "INSERT INTO media (uploader_id, file_type, family, hash, size, original_name, uploaded_at)
             VALUES (1, 'video/mp4', 'video', ?1, ?2, NULL, ?3)",
            params![h.as_bytes(), size as i64, now],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn load(base: &str, token: &str, stop: PathBuf, concurrency: usize) -> anyhow::Result<()> {
    let png =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/png/gray1.png"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let (lat, errors): (Vec<Duration>, Vec<String>) = rt.block_on(async {
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let (client, png, stop) = (client.clone(), png.clone(), stop.clone());
            let url = format!("{base}/v1/media?uploader_id=7");
            let auth = format!("Bearer {token}");
            tasks.push(tokio::spawn(async move {
                let (mut out, mut errors) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.exists() {
                    // Bytes after IEND make each upload unique (a new blob each time).
                    let mut body = png.clone();
                    body.extend_from_slice(format!("{w}-{n}-{}", now_ms()).as_bytes());
                    n += 1;
                    let t = Instant::now();
                    let resp = client
                        .post(&url)
                        .header("authorization", &auth)
                        .body(body)
                        .send()
                        .await;
                    out.push(t.elapsed());
                    match resp {
                        Ok(r) if r.status() == 201 => {}
                        Ok(r) => errors.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (out, errors)
            }));
        }
        let (mut all, mut errors) = (Vec::new(), Vec::new());
        for t in tasks {
            let (l, e) = t.await.expect("load task");
            all.extend(l);
            errors.extend(e);
        }
        (all, errors)
    });
    let mut lat = lat;
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "uploads={} failed={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        lat.len(),
        errors.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0)
    );
    if let Some(e) = errors.first() {
        eprintln!("first failed upload: {e}");
    }
    Ok(())
}
