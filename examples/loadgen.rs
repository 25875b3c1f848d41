//! Load generator and baselines for `benches/upload.sh` (whole-program benchmarks).
//!
//! Modes (each prints one JSON line):
//!   small URL TOKEN CLIENTS COUNT SIZE   unique SIZE-byte PNG-typed uploads from CLIENTS tasks
//!   dup URL TOKEN COUNT SIZE             the same SIZE-byte body COUNT times (after one priming upload)
//!   big URL TOKEN FILE PARALLEL          PARALLEL concurrent uploads streamed from FILE
//!   durable-seq DIR COUNT SIZE           the plain per-file durable sequence, one thread:
//!                                        create, write, fsync, rename, fsync folder
//!   seed-index DATA_DIR ROWS             fills an index with ROWS media rows (for list latency)
//!   list URL TOKEN QUERIES               runs listing queries, reports p50/p99 per query shape
//!   upload-files URL TOKEN FILE...       uploads each file (raw), prints the media ids as a JSON list
//!   download URL TOKEN CONNS SECS SIZE   uploads one SIZE-byte PNG, then downloads it
//!                                        through its signed URL from CONNS keep-alive
//!                                        connections for SECS seconds
//!   variant URL TOKEN PARALLEL VARIANT ID...
//!                                        signs and downloads VARIANT of each media id from
//!                                        PARALLEL tasks (for `benches/renditions.sh`)

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let n = |i: usize| a(i).parse::<u64>().unwrap_or_else(|_| usage());
    let rt = tokio::runtime::Runtime::new().unwrap();
    match a(0).as_str() {
        "small" => rt.block_on(small(
            a(1),
            a(2),
            n(3) as usize,
            n(4) as usize,
            n(5) as usize,
        )),
        "dup" => rt.block_on(dup(a(1), a(2), n(3) as usize, n(4) as usize)),
        "big" => rt.block_on(big(a(1), a(2), a(3), n(4) as usize)),
        "durable-seq" => durable_seq(&a(1), n(2) as usize, n(3) as usize),
        "seed-index" => seed_index(&a(1), n(2)),
        "list" => rt.block_on(list(a(1), a(2), n(3) as usize)),
        "download" => rt.block_on(download(a(1), a(2), n(3) as usize, n(4), n(5) as usize)),
        "upload-files" => rt.block_on(upload_files(a(1), a(2), args[3..].to_vec())),
        "variant" => rt.block_on(variant(
            a(1),
            a(2),
            n(3) as usize,
            a(4),
            args[5..]
                .iter()
                .map(|s| s.parse().unwrap_or_else(|_| usage()))
                .collect(),
        )),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("see the module doc of examples/loadgen.rs");
    std::process::exit(2)
}

/// A body that sniffs as PNG and is unique per (seed, i).
fn png_body(size: usize, seed: u64) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x00\0\0\0".to_vec();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

/// The latencies (sorted) and failure count of all client tasks.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>) -> (Vec<Duration>, u64) {
    let (mut lat, mut failed) = (Vec::new(), 0);
    for t in tasks {
        let (l, f) = t.await.unwrap();
        lat.extend(l);
        failed += f;
    }
    lat.sort();
    (lat, failed)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> u16 {
    match client
        .post(format!("{url}/v1/media?uploader_id=1"))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

async fn small(url: String, token: String, clients: usize, count: usize, size: usize) {
    let client = reqwest::Client::new();
    let seed0: u64 = rand::random();
    let start = Instant::now();
    let per = count / clients;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                let mut failed = 0;
                for i in 0..per {
                    let body = png_body(size, seed0 ^ ((c * per + i) as u64) << 1);
                    let t = Instant::now();
                    if post(&client, &url, &token, body).await != 201 {
                        failed += 1;
                    }
                    lat.push(t.elapsed());
                }
                (lat, failed)
            })
        })
        .collect();
    let (lat, failed) = gather(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"mode": "small", "uploads": lat.len(), "failed": failed, "secs": secs,
               "per_sec": lat.len() as f64 / secs, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)})
    );
}

/// Signed whole-file downloads of one small blob over keep-alive connections
/// (each task keeps its own connection: a client with a pool of one).
async fn download(url: String, token: String, conns: usize, secs: u64, size: usize) {
    let setup = reqwest::Client::new();
    let resp = setup
        .post(format!("{url}/v1/media?uploader_id=1"))
        .header("authorization", format!("Bearer {token}"))
        .body(png_body(size, rand::random()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let resp = setup
        .post(format!("{url}/v1/media/{id}/url"))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"ttl_secs": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let signed = format!(
        "{url}{}",
        resp.json::<serde_json::Value>().await.unwrap()["url"]
            .as_str()
            .unwrap()
    );
    let stop = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let signed = signed.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let (mut lat, mut failed) = (Vec::new(), 0);
                while Instant::now() < stop {
                    let t = Instant::now();
                    match client.get(&signed).send().await {
                        Ok(r) if r.status() == 200 => match r.bytes().await {
                            Ok(b) if b.len() == size => {}
                            _ => failed += 1,
                        },
                        _ => failed += 1,
                    }
                    lat.push(t.elapsed());
                }
                (lat, failed)
            })
        })
        .collect();
    let (lat, failed) = gather(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"mode": "download", "requests": lat.len(), "failed": failed, "secs": secs,
               "per_sec": lat.len() as f64 / secs, "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)})
    );
}

async fn dup(url: String, token: String, count: usize, size: usize) {
    let client = reqwest::Client::new();
    let body = bytes::Bytes::from(png_body(size, rand::random()));
    assert_eq!(post(&client, &url, &token, body.clone()).await, 201);
    let start = Instant::now();
    for _ in 0..count {
        assert_eq!(post(&client, &url, &token, body.clone()).await, 201);
    }
    let secs = start.elapsed().as_secs_f64();
    let mb = (count * size) as f64 / 1e6;
    println!(
        "{}",
        json!({"mode": "dup", "uploads": count, "size": size, "secs": secs, "mb_per_sec": mb / secs})
    );
}

async fn big(url: String, token: String, file: String, parallel: usize) {
    let client = reqwest::Client::new();
    let len = std::fs::metadata(&file).unwrap().len();
    let start = Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|_| {
            let (client, url, token, file) =
                (client.clone(), url.clone(), token.clone(), file.clone());
            tokio::spawn(async move {
                let f = tokio::fs::File::open(&file).await.unwrap();
                let stream = tokio_util::io::ReaderStream::with_capacity(f, 1 << 20);
                post(&client, &url, &token, reqwest::Body::wrap_stream(stream)).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"mode": "big", "parallel": parallel, "bytes_each": len, "secs": secs, "statuses": statuses,
               "mb_per_sec": (len as f64 * parallel as f64) / 1e6 / secs})
    );
}

fn durable_seq(dir: &str, count: usize, size: usize) {
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    let seed: u64 = rand::random();
    let start = Instant::now();
    for i in 0..count {
        let body = png_body(size, seed ^ (i as u64) << 1);
        let tmp = dir.join(format!("{i}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .unwrap();
        f.write_all(&body).unwrap();
        f.sync_data().unwrap();
        std::fs::rename(&tmp, dir.join(format!("{i}"))).unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"mode": "durable-seq", "files": count, "secs": secs, "per_sec": count as f64 / secs})
    );
}

fn seed_index(data: &str, rows: u64) {
    let data = std::path::Path::new(data);
    std::fs::create_dir_all(data).unwrap();
    // A benchmark fixture: rows go in directly, in one transaction, into the
    // index the daemon's own code created.
    drop(media_store::index::Maintenance::create(data).unwrap());
    let mut conn = rusqlite::Connection::open(media_store::index::path_in(data)).unwrap();
    conn.pragma_update(None, "synchronous", "OFF").unwrap();
    conn.pragma_update(None, "cache_size", -2_000_000).unwrap();
    let types = [
        "image/jpeg",
        "image/png",
        "video/mp4",
        "audio/mpeg",
        "application/pdf",
        "image/webp",
    ];
    let start = Instant::now();
    let base_ms: i64 = 1_700_000_000_000;
    let blob = blake3::hash(b"seed");
    let tx = conn.transaction().unwrap();
    tx.execute(
        "INSERT OR IGNORE INTO blobs (hash, size, refcount, zero_since, created_at) VALUES (?1, 4, 0, NULL, 0)",
        [blob.as_bytes()],
    )
    .unwrap();
    tx.commit().unwrap();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let batch = 200_000;
    let mut done = 0;
    while done < rows {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare("INSERT INTO media (uploader_id, file_type, family, hash, size, original_name, uploaded_at) VALUES (?1, ?2, ?3, ?4, 4, NULL, ?5)")
                .unwrap();
            for _ in 0..batch.min(rows - done) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // 100,000 uploaders; a few heavy ones (id < 100) get a third of all rows.
                let uploader = if x.is_multiple_of(3) {
                    (x >> 8) % 100
                } else {
                    (x >> 8) % 100_000
                } as i64;
                let t = types[(x >> 40) as usize % types.len()];
                let family = t.split('/').next().unwrap();
                // One upload every 3 s on average, over about a year for 10 M rows.
                let at = base_ms + (done as i64) * 3000;
                stmt.execute(rusqlite::params![uploader, t, family, blob.as_bytes(), at])
                    .unwrap();
                done += 1;
            }
        }
        tx.commit().unwrap();
        eprint!("\rseeded {done}/{rows}");
    }
    eprintln!();
    conn.execute("ANALYZE", []).unwrap();
    println!(
        "{}",
        json!({"mode": "seed-index", "rows": rows, "secs": start.elapsed().as_secs_f64()})
    );
}

/// Builds a listing query string from a random number.
type QueryShape = Box<dyn Fn(u64) -> String>;

async fn list(url: String, token: String, queries: usize) {
    let client = reqwest::Client::new();
    let shapes: Vec<(&str, QueryShape)> = vec![
        ("newest", Box::new(|_| "limit=50".to_string())),
        (
            "uploader",
            Box::new(|x| format!("uploader_id={}&limit=50", x % 100_000)),
        ),
        (
            "heavy_uploader_family",
            Box::new(|x| format!("uploader_id={}&type=video/*&limit=50", x % 100)),
        ),
        (
            "exact_type",
            Box::new(|_| "type=application/pdf&limit=50".to_string()),
        ),
        (
            "uploader_type_window",
            Box::new(|x| {
                let since = 1_700_000_000 + (x % 20_000_000) as i64;
                format!(
                    "uploader_id={}&type=image/*&since={since}&until={}&limit=50",
                    x % 100,
                    since + 2_000_000
                )
            }),
        ),
        (
            "time_window",
            Box::new(|x| {
                let since = 1_700_000_000 + (x % 25_000_000) as i64;
                format!("since={since}&until={}&limit=50", since + 86_400)
            }),
        ),
    ];
    let mut out = serde_json::Map::new();
    let mut x: u64 = 0xdead_beef_1234_5678;
    for (name, make) in &shapes {
        let mut lat = Vec::with_capacity(queries);
        let mut cursor: Option<String> = None;
        for i in 0..queries {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut q = make(x);
            // Every other query follows the previous page's cursor (deep pages cost the same).
            if i % 2 == 1
                && let Some(c) = &cursor
            {
                q.push_str(&format!("&cursor={c}"));
            }
            let t = Instant::now();
            let resp = client
                .get(format!("{url}/v1/media?{q}"))
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{q}");
            let body: serde_json::Value = resp.json().await.unwrap();
            lat.push(t.elapsed());
            cursor = body["next_cursor"].as_str().map(str::to_owned);
        }
        lat.sort();
        out.insert(
            name.to_string(),
            json!({"p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)}),
        );
    }
    println!(
        "{}",
        json!({"mode": "list", "queries_per_shape": queries, "shapes": out})
    );
}

async fn upload_files(url: String, token: String, files: Vec<String>) {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for f in files {
        let body = std::fs::read(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let resp = client
            .post(format!("{url}/v1/media?uploader_id=1"))
            .header("authorization", format!("Bearer {token}"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{f}");
        let v: serde_json::Value = resp.json().await.unwrap();
        ids.push(v["id"].as_i64().unwrap());
    }
    println!("{}", json!(ids));
}

async fn variant(url: String, token: String, parallel: usize, variant: String, ids: Vec<i64>) {
    let client = reqwest::Client::new();
    let mut urls = Vec::new();
    for id in &ids {
        let resp = client
            .post(format!("{url}/v1/media/{id}/url"))
            .header("authorization", format!("Bearer {token}"))
            .json(&json!({"variant": variant}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        urls.push(format!("{url}{}", v["url"].as_str().unwrap()));
    }
    let queue = std::sync::Arc::new(std::sync::Mutex::new(urls));
    let start = Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|_| {
            let (client, queue) = (client.clone(), queue.clone());
            tokio::spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0);
                loop {
                    let Some(u) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let t = Instant::now();
                    match client.get(&u).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                        }
                        _ => failed += 1,
                    }
                    lat.push(t.elapsed());
                }
                (lat, failed)
            })
        })
        .collect();
    let (lat, failed) = gather(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"mode": "variant", "variant": variant, "count": lat.len(), "failed": failed,
               "secs": secs, "per_sec": lat.len() as f64 / secs,
               "p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99)})
    );
}
