//! Benchmark of the MySQL mirror (issue 5), run by `benches/mysql_sync.sh`
//! against a throwaway MariaDB. Whole-program figures, each with a baseline
//! measured in the same run:
//!
//! 1. sync throughput: N media rows drained from the outbox into MariaDB with
//!    batching (`mysql.batch_size`), vs the same path with batch size 1;
//! 2. lag under steady 500 uploads/s through the real daemon binary: time from
//!    the 201 to the row being visible in MariaDB (p50/p99/max), and the upload
//!    latency with the mirror vs a daemon without MySQL (uploads must not wait);
//! 3. reconcile of the N-row table (in sync, then with 1% corrupted + repair),
//!    vs a plain full read of both tables.
//!
//! Usage: mysql_sync_bench <daemon binary> <mysql url with {db}> <work dir> [rows]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media_store::index::Index;
use media_store::mirror::mysql as my;
use media_store::mirror::{MysqlConfig, ack, drain_batch, reconcile};
use mysql::prelude::Queryable;

const TOKEN: &str = "bench-token-0123456789";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() >= 4,
        "usage: mysql_sync_bench <daemon binary> <mysql url> <work dir> [rows]"
    );
    let (daemon, url, work) = (PathBuf::from(&args[1]), &args[2], PathBuf::from(&args[3]));
    let rows: usize = args.get(4).map_or(Ok(1_000_000), |s| s.parse())?;
    std::fs::create_dir_all(&work)?;

    let with_db = |db: &str| url.replace("{db}", db);
    let mut admin = mysql::Conn::new(mysql::Opts::from_url(&with_db("mysql"))?)?;
    for db in ["bench_bulk", "bench_lag0", "bench_lag1"] {
        admin.query_drop(format!("DROP DATABASE IF EXISTS {db}"))?;
    }
    admin.query_drop("CREATE DATABASE bench_bulk")?;

    // 2. Lag under steady load, interleaved with the no-MySQL daemon as the
    // baseline (A B A B), on a fresh MariaDB before the bulk phase.
    let secs = 10;
    let rate = 500;
    let mut base_lat = Vec::new();
    let mut mirror_lat = Vec::new();
    let mut lags = Vec::new();
    for round in 0..2 {
        let b = load_run(
            &daemon,
            &work.join(format!("lag-baseline-{round}")),
            None,
            rate,
            secs,
        )?;
        base_lat.extend(b.latencies);
        let db = format!("bench_lag{round}");
        admin.query_drop(format!("CREATE DATABASE {db}"))?;
        let m = load_run(
            &daemon,
            &work.join(format!("lag-mirror-{round}")),
            Some(&with_db(&db)),
            rate,
            secs,
        )?;
        mirror_lat.extend(m.latencies);
        lags.extend(m.lags.expect("mirror run measures lag"));
    }
    println!(
        "lag at {rate} uploads/s, 2 x {secs} s ({} uploads, {} mirrored): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        mirror_lat.len(),
        lags.len(),
        pct(&lags, 50.0),
        pct(&lags, 99.0),
        pct(&lags, 100.0)
    );
    println!(
        "upload latency with mirror: p50 {:.1} ms, p99 {:.1} ms; baseline without MySQL: p50 {:.1} ms, p99 {:.1} ms; p99 ratio {:.2}x",
        pct(&mirror_lat, 50.0),
        pct(&mirror_lat, 99.0),
        pct(&base_lat, 50.0),
        pct(&base_lat, 99.0),
        pct(&mirror_lat, 99.0) / pct(&base_lat, 99.0)
    );

    // 1. Throughput.
    let cfg = MysqlConfig {
        url: with_db("bench_bulk"),
        ..Default::default()
    };
    let opts = my::opts(&cfg)?;
    let mut conn = my::connect(&opts)?;
    my::migrate(&mut conn)?;
    let data = work.join("bulk");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let t = Instant::now();
    fill_index(&data.join("index.sqlite3"), rows)?;
    println!(
        "setup: {rows} media rows (and outbox entries) written to SQLite in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Only outbox rows are written: no blob installs to make durable.
    let index = Index::open(
        &data.join("index.sqlite3"),
        &media_store::index::IndexConfig::default(),
        std::sync::Arc::new(|_| Ok(())),
    )?;
    let unbatched_n = 3000;
    let (unbatched_rows, unbatched_s) = drain(&index, &mut conn, 1, Some(unbatched_n))?;
    let (batched_rows, batched_s) = drain(&index, &mut conn, cfg.batch_size, None)?;
    let unbatched_rate = unbatched_rows as f64 / unbatched_s;
    let batched_rate = batched_rows as f64 / batched_s;
    println!(
        "sync throughput: batch_size={} {:.0} rows/s ({batched_rows} rows in {batched_s:.1} s); \
         baseline batch_size=1 {:.0} rows/s ({unbatched_rows} rows); ratio {:.1}x",
        cfg.batch_size,
        batched_rate,
        unbatched_rate,
        batched_rate / unbatched_rate
    );

    // 3. Reconcile (before the lag run: it needs the bulk table).
    let t = Instant::now();
    let report = compare(&index, &mut conn, cfg.reconcile_chunk, false)?;
    let compare_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(report.differences() == 0, "not in sync: {report:?}");
    let t = Instant::now();
    let raw = raw_read(&index, &mut conn)?;
    let raw_s = t.elapsed().as_secs_f64();
    println!(
        "reconcile (in sync): {} rows compared in {compare_s:.1} s; baseline full read of both tables \
         ({raw} rows) {raw_s:.1} s; ratio {:.2}x",
        report.index_rows,
        compare_s / raw_s
    );
    let bad = (rows / 100).max(1) as i64;
    conn.exec_drop("DELETE FROM media_files WHERE id <= ?", (bad / 2,))?;
    conn.exec_drop(
        "UPDATE media_files SET file_type = 'x/y' WHERE id > ? AND id <= ?",
        (rows as i64 - bad / 2, rows as i64),
    )?;
    let t = Instant::now();
    let report = compare(&index, &mut conn, cfg.reconcile_chunk, true)?;
    let (repaired, _) = drain(&index, &mut conn, cfg.batch_size, None)?;
    let repair_s = t.elapsed().as_secs_f64();
    let check = compare(&index, &mut conn, cfg.reconcile_chunk, false)?;
    anyhow::ensure!(check.differences() == 0, "repair left {check:?}");
    println!(
        "reconcile (1% corrupted): missing={} differing={} found and {repaired} rows repaired in {repair_s:.1} s",
        report.missing, report.differing
    );
    drop(index);

    Ok(())
}

/// Writes `rows` media rows straight into a fresh index with the mirror's
/// triggers on, as uploads would (one transaction: setup speed only).
fn fill_index(path: &Path, rows: usize) -> anyhow::Result<()> {
    // A benchmark fixture: the daemon's code creates the index and turns the
    // mirror's triggers on; the rows then go in directly, in one transaction.
    let data = path.parent().expect("index file in a folder");
    media_store::index::Maintenance::create(data)?.immediate(|tx| tx.outbox_enable())?;
    let mut c = rusqlite::Connection::open(path)?;
    // Setup speed only: a large page cache for the random-hash inserts.
    c.pragma_update(None, "cache_size", -512_000)?;
    let tx = c.transaction()?;
    {
        let now = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
        let mut blob = tx.prepare(
            "INSERT INTO blobs (hash, size, refcount, zero_since, created_at) VALUES (?1, ?2, 1, NULL, ?3)",
        )?;
        let mut media = tx.prepare(
            "INSERT INTO media (uploader_id, file_type, family, hash, size, original_name, uploaded_at)
             VALUES (?1, ?2, ?3, ?4, ?5, NULL, ?6)",
        )?;
        for i in 0..rows as u64 {
            let hash = blake3::hash(&i.to_le_bytes());
            let size = 1000 + i % 50_000;
            let t = if i % 3 == 0 {
                "image/png"
            } else {
                "image/jpeg"
            };
            blob.execute(rusqlite::params![hash.as_bytes(), size, now])?;
            media.execute(rusqlite::params![
                (i % 1000) as i64,
                t,
                "image",
                hash.as_bytes(),
                size,
                now - (rows as i64 - i as i64)
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A reconcile of the whole table against the index (`queue`: repair).
fn compare(
    index: &Index,
    conn: &mut mysql::Conn,
    chunk: usize,
    queue: bool,
) -> anyhow::Result<reconcile::Report> {
    let clock = media_store::clock::SystemClock;
    Ok(reconcile::compare(index, conn, chunk, "", queue, &clock)?)
}

/// Drains the outbox (up to `limit` entries); returns (rows, seconds).
fn drain(
    index: &Index,
    conn: &mut mysql::Conn,
    batch: usize,
    limit: Option<usize>,
) -> anyhow::Result<(usize, f64)> {
    // As the daemon's worker does: ack every 250 ms and at the end.
    let t = Instant::now();
    let mut n = 0;
    let (mut sent, mut acked_at) = (0, Instant::now());
    while limit.is_none_or(|l| n < l) {
        match drain_batch(index, conn, batch, "", sent, |_| {})? {
            Some(d) => {
                n += d.rows;
                sent = d.last_seq;
                if acked_at.elapsed() >= Duration::from_millis(250) {
                    ack(index, sent)?;
                    acked_at = Instant::now();
                }
            }
            None => break,
        }
    }
    if sent > 0 {
        ack(index, sent)?;
    }
    Ok((n, t.elapsed().as_secs_f64()))
}

/// Reads every row of both tables once, with no comparison (the floor for reconcile).
fn raw_read(index: &Index, conn: &mut mysql::Conn) -> anyhow::Result<usize> {
    let ours = index.read_blocking(|r| -> media_store::index::Result<usize> {
        let (mut n, mut from) = (0usize, i64::MIN);
        loop {
            let rows = r.media_from(from, 10_000)?;
            let Some(last) = rows.last() else { break };
            from = last.id + 1;
            n += rows.len();
        }
        Ok(n)
    })?;
    let mut theirs = 0usize;
    for row in conn.query_iter(
        "SELECT id, uploader_id, file_url, file_type, CAST(UNIX_TIMESTAMP(uploaded_at) AS SIGNED), size, blake3 FROM media_files",
    )? {
        row?;
        theirs += 1;
    }
    Ok(ours + theirs)
}

struct LoadRun {
    /// Upload round-trip times (ms).
    latencies: Vec<f64>,
    /// 201 received -> row visible in MySQL (ms), when the mirror was on.
    lags: Option<Vec<f64>>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

struct Daemon(Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.0.wait();
    }
}

fn load_run(
    daemon: &Path,
    dir: &Path,
    mysql_url: Option<&str>,
    rate: u64,
    secs: u64,
) -> anyhow::Result<LoadRun> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut child = Command::new(daemon)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.join("data"))
        .env("MEDIA_STORE_API_TOKEN", TOKEN)
        .env("MEDIA_STORE_MYSQL_URL", mysql_url.unwrap_or(""))
        .env("MEDIA_STORE_MYSQL_POLL_INTERVAL_MS", "10")
        .env("MEDIA_STORE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let daemon_guard = Daemon(child);
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let base = loop {
        line.clear();
        anyhow::ensure!(
            reader.read_line(&mut line)? > 0,
            "daemon exited before listening"
        );
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            break addr.to_owned();
        }
    };
    // Wait for the worker's first connect + reconcile of the empty table.
    std::thread::sleep(Duration::from_millis(500));

    // The MySQL watcher: first time each id is seen.
    let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = mysql_url.map(|url| {
        let (seen, stop, url) = (seen.clone(), stop.clone(), url.to_owned());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut c = mysql::Conn::new(mysql::Opts::from_url(&url)?)?;
            let mut last = 0i64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ids: Vec<i64> = c
                    .exec(
                        "SELECT id FROM media_files WHERE id > ? ORDER BY id",
                        (last,),
                    )
                    .unwrap_or_default();
                let now = Instant::now();
                let mut s = seen.lock().unwrap();
                for id in ids {
                    s.entry(id).or_insert(now);
                    last = last.max(id);
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })
    });

    let runtime = tokio::runtime::Runtime::new()?;
    let done: Vec<(i64, Instant, f64)> = runtime.block_on(async {
        let client = reqwest::Client::new();
        let png =
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/png/gray1.png"))
                .expect("testdata png");
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut tasks = Vec::new();
        for i in 0..rate * secs {
            tick.tick().await;
            let (client, base) = (client.clone(), base.clone());
            let body = unique_png(&png, i);
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let resp = client
                    .post(format!("{base}/v1/media?uploader_id=1"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                if resp.status().as_u16() != 201 {
                    return None;
                }
                let v: serde_json::Value = resp.json().await.ok()?;
                let at = Instant::now();
                Some((v["id"].as_i64()?, at, (at - t).as_secs_f64() * 1000.0))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            if let Ok(Some(r)) = t.await {
                out.push(r);
            }
        }
        out
    });
    anyhow::ensure!(
        done.len() as u64 == rate * secs,
        "only {} of {} uploads succeeded",
        done.len(),
        rate * secs
    );
    let lags = if let Some(w) = watcher {
        // Let the tail drain (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.lock().unwrap().len() < done.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        w.join().expect("watcher")?;
        let seen = seen.lock().unwrap();
        Some(
            done.iter()
                .filter_map(|(id, at, _)| {
                    seen.get(id)
                        .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0)
                })
                .collect::<Vec<f64>>(),
        )
    } else {
        None
    };
    drop(daemon_guard);
    Ok(LoadRun {
        latencies: done.iter().map(|d| d.2).collect(),
        lags,
    })
}

/// A valid PNG made unique by a tEXt chunk (so every upload is a new blob).
fn unique_png(png: &[u8], seed: u64) -> Vec<u8> {
    let mut png = png.to_vec();
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
