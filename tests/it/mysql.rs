//! The MySQL mirror against a real MariaDB (issue 5): sync, deletes, outages,
//! daemon crashes, reconcile, migrations and the GC safety belt.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use media_store::lifecycle::ExternalReferences as _;
use mysql::prelude::Queryable;

use crate::harness::mariadb::MariaDb;
use crate::harness::*;

/// (id, uploader_id, file_url, file_type, uploaded_at seconds, size, blake3 hex)
type Row = (i64, i64, String, String, i64, u64, String);

fn mysql_toml(url: &str, base: &str) -> String {
    format!(
        "public_base_url = \"{base}\"\n[mysql]\nurl = \"{url}\"\npoll_interval_ms = 20\nbackoff_max_ms = 400\nconnect_timeout_ms = 1000\nio_timeout_ms = 5000\n"
    )
}

/// The seed's `file_type VARCHAR(50)` holds "MIME type or file extension": the
/// test corpus's only longer type is Word's, mirrored as `docx`.
fn seed_file_type(mime: String) -> String {
    match mime.as_str() {
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => "docx".into(),
        m => {
            assert!(m.len() <= 50, "no expectation for {m}");
            mime
        }
    }
}

/// What the index says media_files must hold, computed independently of the sync code.
fn expected_rows(data: &Path, base: &str) -> Vec<Row> {
    let c = index(data);
    let mut stmt = c
        .prepare(
            "SELECT id, uploader_id, file_type, hash, size, uploaded_at FROM media ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| {
        let id: i64 = r.get(0)?;
        let hash: [u8; 32] = r.get(3)?;
        let ms: i64 = r.get(5)?;
        Ok((
            id,
            r.get(1)?,
            format!("{base}/files/{id}"),
            seed_file_type(r.get(2)?),
            ms.div_euclid(1000),
            r.get(4)?,
            blake3::Hash::from_bytes(hash).to_hex().to_string(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn try_mysql_rows(conn: &mut mysql::Conn) -> mysql::Result<Vec<Row>> {
    conn.query(
        "SELECT id, uploader_id, file_url, file_type, CAST(UNIX_TIMESTAMP(uploaded_at) AS SIGNED), size, blake3 \
         FROM media_files ORDER BY id",
    )
}

fn mysql_rows(conn: &mut mysql::Conn) -> Vec<Row> {
    try_mysql_rows(conn).unwrap()
}

/// How long the mirror may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(20);

/// Waits (bounded) until media_files equals the index exactly and the outbox is empty.
async fn wait_mirrored(db: &MariaDb, name: &str, data: &Path, base: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut conn = db.conn(name);
    loop {
        let want = expected_rows(data, base);
        // Until the worker's first connect has migrated, the table may be absent or partial.
        let got = try_mysql_rows(&mut conn).unwrap_or_default();
        let backlog = outbox_len(data);
        if want == got && backlog == 0 {
            return;
        }
        if Instant::now() > deadline {
            let missing = want.iter().filter(|r| !got.contains(r)).count();
            let extra = got.iter().filter(|r| !want.contains(r)).count();
            panic!(
                "media_files did not converge in {limit:?}: index {} rows, mysql {} rows, \
                 {missing} index rows not mirrored exactly, {extra} mysql rows not in the index, outbox {backlog}\n\
                 first missing: {:?}\nfirst extra: {:?}",
                want.len(),
                got.len(),
                want.iter().find(|r| !got.contains(r)),
                got.iter().find(|r| !want.contains(r)),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_appear_with_the_same_ids_and_values_and_deletes_propagate() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let base = "https://media.example.org";
    // Over the unix socket (the TCP URL is covered by the outage test).
    let app = TestApp::start_with(&mysql_toml(&db.socket_url(&name), base)).await;
    let files = [
        testdata("png/rgb8.png"),
        testdata("document/sample.docx"),
        testdata("document/sample.pdf"),
        unique_png(1),
        unique_png(2),
        testdata("png/rgb8.png"), // a duplicate is its own media row
    ];
    let mut uploaded = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let (status, body) = upload_raw(&app.client, &app.base, 40 + i as i64, f).await;
        assert_eq!(status, 201, "{body}");
        uploaded.push(body);
    }
    wait_mirrored(db, &name, &app.data, base, CONVERGE).await;
    // Same ids and the values the API shows.
    let mut conn = db.conn(&name);
    let rows = mysql_rows(&mut conn);
    assert_eq!(rows.len(), uploaded.len());
    for (row, api) in rows.iter().zip(&uploaded) {
        assert_eq!(row.0, api["id"].as_i64().unwrap());
        assert_eq!(row.1, api["uploader_id"].as_i64().unwrap());
        assert_eq!(row.2, api["file_url"].as_str().unwrap());
        assert_eq!(
            row.3,
            media_store::mirror::mirror_file_type(api["file_type"].as_str().unwrap())
        );
        assert_eq!(row.5, api["size"].as_u64().unwrap());
        assert_eq!(row.6, api["blake3"].as_str().unwrap());
        let at =
            media_store::timefmt::parse_instant_ms(api["uploaded_at"].as_str().unwrap()).unwrap();
        assert_eq!(row.4, at.div_euclid(1000));
    }
    // MIME types longer than the seed's VARCHAR(50) are mirrored as their extension.
    let types: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    assert!(types.contains(&"application/pdf"));
    assert!(types.contains(&"docx"));

    // Deletes propagate.
    let gone = [
        uploaded[0]["id"].as_i64().unwrap(),
        uploaded[3]["id"].as_i64().unwrap(),
    ];
    for id in gone {
        assert_eq!(delete_media(&app.client, &app.base, id).await, 204);
    }
    wait_mirrored(db, &name, &app.data, base, CONVERGE).await;
    let left: Vec<i64> = mysql_rows(&mut conn).iter().map(|r| r.0).collect();
    assert_eq!(left.len(), uploaded.len() - 2);
    assert!(gone.iter().all(|id| !left.contains(id)));

    // Health detail and metrics show the mirror.
    let (status, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["mysql"]["enabled"], true);
    assert_eq!(health["mysql"]["connected"], true);
    assert_eq!(health["mysql"]["backlog"], 0);
    assert!(health["mysql"]["last_sync_at"].is_string(), "{health}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("media_store_mysql_outbox_backlog"),
        "{metrics}"
    );
    assert!(
        metrics.contains("media_store_mysql_rows_synced_total"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_during_5000_uploads_then_restarted_converges_to_exactly_the_index() {
    // A dedicated server: this test kills it.
    let db = std::sync::Arc::new(MariaDb::start());
    let name = db.create_db();
    let base = "";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::start_in(&data, &mysql_toml(&db.tcp_url(&name), base)).await;
    let total = 5000u64;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));

    // The outage: kill -9 after 1,000 uploads, restart 1.5 s later, while uploads go on.
    let chaos = {
        let (db, done) = (db.clone(), done.clone());
        let client = app.client.clone();
        let health = app.url("/healthz");
        tokio::spawn(async move {
            wait_until(Duration::from_secs(120), "1,000 uploads", || {
                done.load(std::sync::atomic::Ordering::SeqCst) >= 1000
            })
            .await;
            let killer = db.clone();
            tokio::task::spawn_blocking(move || killer.kill9())
                .await
                .unwrap();
            // The backlog must show while MySQL is down.
            let mut seen_down = None;
            for _ in 0..100 {
                let (_, h) = get_json(&client, &health).await;
                if h["mysql"]["connected"] == false && h["mysql"]["backlog"].as_i64() > Some(0) {
                    seen_down = Some(h);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let restarter = db.clone();
            tokio::task::spawn_blocking(move || restarter.restart())
                .await
                .unwrap();
            seen_down
        })
    };

    let client = app.client.clone();
    let app_base = app.base.clone();
    let statuses: Vec<(u16, Option<i64>)> = futures_util::stream::iter(0..total)
        .map(|i| {
            let (client, app_base, done) = (client.clone(), app_base.clone(), done.clone());
            async move {
                let (status, body) =
                    upload_raw(&client, &app_base, (i % 7) as i64, unique_png(10_000 + i)).await;
                // Every 10th upload deletes an earlier one: deletes race with the outage too.
                let mut delete_status = None;
                if i % 10 == 9 {
                    let id = body["id"].as_i64().unwrap() - 5;
                    delete_status = Some(delete_media(&client, &app_base, id).await as i64);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (status, delete_status)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // Uploads never waited for or failed because of MySQL.
    assert!(
        statuses.iter().all(|(s, _)| *s == 201),
        "an upload failed during the outage"
    );
    assert!(
        statuses
            .iter()
            .filter_map(|(_, d)| *d)
            .all(|d| d == 204 || d == 404)
    );
    let seen_down = chaos.await.unwrap();
    assert!(
        seen_down.is_some(),
        "healthz never showed MySQL down with a backlog"
    );

    wait_mirrored(&db, &name, &data, base, Duration::from_secs(60)).await;
    let rows = expected_rows(&data, base).len();
    assert!(rows > 4000, "only {rows} rows");
    let (_, health) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(health["mysql"]["connected"], true, "{health}");
    assert_eq!(
        health["mysql"]["last_error"],
        serde_json::Value::Null,
        "{health}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_killed_with_a_non_empty_outbox_resumes_and_drains() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let toml = mysql_toml(&db.tcp_url(&name), "");
    let mut d = TestDaemon::start(&data, &dir.path().join("run1"), &toml);
    for i in 0..5 {
        upload_ok(&d.client, &d.base, 1, unique_png(500 + i)).await;
    }
    wait_mirrored(db, &name, &data, "", CONVERGE).await;
    // Make the table unreachable, so changes pile up in the outbox.
    let mut admin = db.conn(&name);
    admin
        .query_drop("RENAME TABLE media_files TO media_files_away")
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let (status, body) = upload_raw(&d.client, &d.base, 2, unique_png(600 + i)).await;
        assert_eq!(status, 201);
        ids.push(body["id"].as_i64().unwrap());
    }
    assert_eq!(delete_media(&d.client, &d.base, ids[0]).await, 204);
    let (_, health) = get_json(&d.client, &d.url("/healthz")).await;
    assert!(
        health["mysql"]["backlog"].as_i64().unwrap() >= 21,
        "{health}"
    );
    d.kill9();
    let pending = outbox_len(&data);
    assert!(pending >= 21, "outbox has {pending} entries");
    admin
        .query_drop("RENAME TABLE media_files_away TO media_files")
        .unwrap();

    let d2 = TestDaemon::start(&data, &dir.path().join("run2"), &toml);
    wait_mirrored(db, &name, &data, "", CONVERGE).await;
    // It was the durable outbox, not a full reconcile, that caught up.
    let logs = d2.logs();
    assert!(!logs.contains("full reconcile"), "{logs}");
}

/// Waits until no connection holds the database's mirror lock (a stopped
/// in-process app's worker closes its connection asynchronously).
fn wait_mirror_unlocked(db: &MariaDb, name: &str) {
    let mut conn = db.conn(name);
    for _ in 0..200 {
        let used: Option<Option<i64>> = conn
            .query_first("SELECT IS_USED_LOCK(CONCAT('ms_mirror:', MD5(DATABASE())))")
            .unwrap();
        if used.flatten().is_none() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("the mirror lock is still held");
}

fn reconcile_cli(data: &Path, url: &str, dry_run: bool) -> (i32, String) {
    let mut cmd = Command::new(TestDaemon::binary());
    cmd.arg("--data-dir")
        .arg(data)
        .args(["mysql-sync", "--reconcile"])
        .env("MEDIA_STORE_MYSQL_URL", url)
        .env("MEDIA_STORE_PUBLIC_BASE_URL", "https://m.example");
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn corrupt(conn: &mut mysql::Conn, ids: &[i64]) {
    // 3 missing, 2 extra, 4 differing (each in a different column).
    conn.exec_drop(
        "DELETE FROM media_files WHERE id IN (?, ?, ?)",
        (ids[0], ids[1], ids[2]),
    )
    .unwrap();
    // Extra rows media-store wrote (listed as its own) that the index no longer has.
    conn.query_drop(
        "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at, size, blake3) VALUES \
         (900001, 1, 'x', 'image/png', NOW(), 1, 'ab'), (900002, 1, 'y', 'image/png', NOW(), 1, 'cd')",
    )
    .unwrap();
    conn.query_drop("INSERT INTO media_store_rows (id) VALUES (900001), (900002)")
        .unwrap();
    conn.exec_drop(
        "UPDATE media_files SET file_type = 'video/mp4' WHERE id = ?",
        (ids[3],),
    )
    .unwrap();
    conn.exec_drop(
        "UPDATE media_files SET uploader_id = 999 WHERE id = ?",
        (ids[4],),
    )
    .unwrap();
    conn.exec_drop(
        "UPDATE media_files SET file_url = 'http://old/x' WHERE id = ?",
        (ids[5],),
    )
    .unwrap();
    conn.exec_drop(
        "UPDATE media_files SET uploaded_at = uploaded_at - INTERVAL 1 HOUR WHERE id = ?",
        (ids[6],),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_missing_extra_and_differing_rows() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let url = db.tcp_url(&name);
    let base = "https://m.example";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::start_in(&data, &mysql_toml(&url, base)).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let (status, body) = upload_raw(&app.client, &app.base, 3, unique_png(700 + i)).await;
        assert_eq!(status, 201);
        ids.push(body["id"].as_i64().unwrap());
    }
    wait_mirrored(db, &name, &data, base, CONVERGE).await;
    app.stop().await;
    wait_mirror_unlocked(db, &name);

    // Daemon stopped: the CLI repairs by itself.
    let mut conn = db.conn(&name);
    corrupt(&mut conn, &ids);
    let before = mysql_rows(&mut conn);
    let (code, out) = reconcile_cli(&data, &url, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("index_rows=40 mysql_rows=39 missing=3 extra=2 differing=4"),
        "{out}"
    );
    assert_eq!(mysql_rows(&mut conn), before, "a dry run changed MySQL");
    let (code, out) = reconcile_cli(&data, &url, false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("repaired: 9 rows"), "{out}");
    assert_eq!(mysql_rows(&mut conn), expected_rows(&data, base));
    assert_eq!(outbox_len(&data), 0);
    let (code, out) = reconcile_cli(&data, &url, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("missing=0 extra=0 differing=0"), "{out}");

    // Daemon running: the CLI queues the repairs and the daemon's worker applies them.
    let app = TestApp::start_in(&data, &mysql_toml(&url, base)).await;
    wait_mirrored(db, &name, &data, base, CONVERGE).await;
    corrupt(&mut conn, &ids[10..]);
    let (code, out) = tokio::task::spawn_blocking({
        let (data, url) = (data.clone(), url.clone());
        move || reconcile_cli(&data, &url, false)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("missing=3 extra=2 differing=4"), "{out}");
    assert!(out.contains("queued: 9 repairs"), "{out}");
    wait_mirrored(db, &name, &data, base, CONVERGE).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_public_base_url_rewrites_every_file_url_after_restart() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let url = db.socket_url(&name);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::start_in(&data, &mysql_toml(&url, "https://old.example")).await;
    for i in 0..3 {
        upload_ok(&app.client, &app.base, 1, unique_png(800 + i)).await;
    }
    wait_mirrored(db, &name, &data, "https://old.example", CONVERGE).await;
    app.stop().await;
    wait_mirror_unlocked(db, &name);
    let app = TestApp::start_in(&data, &mysql_toml(&url, "https://new.example")).await;
    wait_mirrored(db, &name, &data, "https://new.example", CONVERGE).await;
    app.stop().await;
}

#[test]
fn migrate_upgrades_a_seed_table_and_is_idempotent() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let mut conn = db.conn(&name);
    // The chat deployment's seed table, with a row the backend wrote itself.
    conn.query_drop(
        "CREATE TABLE media_files (id INT AUTO_INCREMENT PRIMARY KEY, uploader_id INT, \
         file_url VARCHAR(255), file_type VARCHAR(50), uploaded_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    )
    .unwrap();
    conn.query_drop("INSERT INTO media_files (uploader_id, file_url, file_type) VALUES (1, '/f/1', 'image/png')")
        .unwrap();
    let migrate = || {
        Command::new(TestDaemon::binary())
            .args(["migrate", "--mysql", &db.tcp_url(&name)])
            .output()
            .unwrap()
    };
    let first = migrate();
    let text = String::from_utf8_lossy(&first.stdout).to_string()
        + &String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{text}");
    assert!(text.contains("applied [1, 2]"), "{text}");
    let second = migrate();
    let text = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(
        second.status.success() && text.contains("up to date"),
        "{text}"
    );
    let versions: Vec<u32> = conn
        .query("SELECT version FROM media_store_schema ORDER BY version")
        .unwrap();
    assert_eq!(versions, vec![1, 2]);
    let (file_type, size, blake3): (String, String, String) = conn
        .query_first(
            "SELECT \
             (SELECT column_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'media_files' AND column_name = 'file_type'), \
             (SELECT column_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'media_files' AND column_name = 'size'), \
             (SELECT column_type FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'media_files' AND column_name = 'blake3')",
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        (file_type.as_str(), size.as_str(), blake3.as_str()),
        ("varchar(50)", "bigint(20) unsigned", "char(64)")
    );
    let kept: i64 = conn
        .query_first("SELECT count(*) FROM media_files")
        .unwrap()
        .unwrap();
    assert_eq!(kept, 1, "the seed's rows survive the migration");
    // A URL that points nowhere is an error (exit 2), not a silent success.
    let bad = Command::new(TestDaemon::binary())
        .args([
            "migrate",
            "--mysql",
            "mysql://root@127.0.0.1:1/x?prefer_socket=false",
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn gc_safety_belt_returns_exactly_the_referenced_ids() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let mut conn = db.conn(&name);
    conn.query_drop(
        "CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT, media_id INT NULL, KEY (media_id))",
    )
    .unwrap();
    // 5 twice, a NULL, and ids past the first 1,000-id chunk.
    for media in [
        Some(2),
        Some(5),
        Some(5),
        Some(7),
        None,
        Some(1500),
        Some(99_999),
    ] {
        conn.exec_drop(
            "INSERT INTO messages (body, media_id) VALUES ('hi', ?)",
            (media,),
        )
        .unwrap();
    }
    let cfg = media_store::mirror::MysqlConfig {
        url: db.tcp_url(&name),
        ..Default::default()
    };
    let refs = media_store::mirror::MysqlReferences::from_config(&cfg)
        .unwrap()
        .expect("configured");
    let asked: Vec<i64> = (1..=2000).collect();
    assert_eq!(refs.referenced(&asked).unwrap(), vec![2, 5, 7, 1500]);
    assert_eq!(refs.referenced(&[3, 4]).unwrap(), Vec::<i64>::new());
    assert_eq!(refs.referenced(&[]).unwrap(), Vec::<i64>::new());
    // A reference added later is seen (no stale cache).
    conn.query_drop("INSERT INTO messages (body, media_id) VALUES ('late', 3)")
        .unwrap();
    assert_eq!(refs.referenced(&[3, 4]).unwrap(), vec![3]);

    // Unknown means error: a broken query, and a server that is not there.
    let broken =
        media_store::mirror::MysqlReferences::from_config(&media_store::mirror::MysqlConfig {
            references_query: "SELECT media_id FROM no_such_table WHERE media_id IN ({ids})".into(),
            ..cfg.clone()
        })
        .unwrap()
        .unwrap();
    assert!(broken.referenced(&[2]).is_err());
    let down =
        media_store::mirror::MysqlReferences::from_config(&media_store::mirror::MysqlConfig {
            url: "mysql://root@127.0.0.1:1/x?prefer_socket=false".into(),
            connect_timeout_ms: 500,
            ..cfg.clone()
        })
        .unwrap()
        .unwrap();
    assert!(down.referenced(&[2]).is_err());
    // No MySQL configured: no external references at all.
    assert!(
        media_store::mirror::MysqlReferences::from_config(&Default::default())
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_mysql_does_not_slow_uploads_and_sync_catches_up_after() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A round trip longer than 1 s counts as "server down".
    let toml =
        mysql_toml(&db.tcp_url(&name), "").replace("io_timeout_ms = 5000", "io_timeout_ms = 1000");
    let app = TestApp::start_in(&data, &toml).await;
    upload_ok(&app.client, &app.base, 1, unique_png(900)).await;
    wait_mirrored(db, &name, &data, "", CONVERGE).await;
    // Another session write-locks the table: the worker's statements hang.
    let mut locker = db.conn(&name);
    locker.query_drop("LOCK TABLES media_files WRITE").unwrap();
    for i in 0..30 {
        let t = Instant::now();
        let (status, _) = upload_raw(&app.client, &app.base, 1, unique_png(901 + i)).await;
        assert_eq!(status, 201);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "an upload waited {:?}",
            t.elapsed()
        );
    }
    // The hang is reported (timeout -> reconnect -> hang again) while the backlog stays.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, h) = get_json(&app.client, &app.url("/healthz")).await;
        if h["mysql"]["last_error"].is_string() && h["mysql"]["backlog"].as_i64() >= Some(30) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz never showed the hang: {h}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    locker.query_drop("UNLOCK TABLES").unwrap();
    wait_mirrored(db, &name, &data, "", Duration::from_secs(30)).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_of_public_base_url_rewrites_every_file_url() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = dir.path().join("run");
    let url = db.socket_url(&name);
    let d = TestDaemon::start(&data, &run, &mysql_toml(&url, "https://a.example"));
    for i in 0..4 {
        upload_ok(&d.client, &d.base, 1, unique_png(950 + i)).await;
    }
    wait_mirrored(db, &name, &data, "https://a.example", CONVERGE).await;
    // Replace the config file as editors do; the daemon keeps running.
    d.replace_config(&mysql_toml(&url, "https://b.example"));
    wait_mirrored(db, &name, &data, "https://b.example", CONVERGE).await;
    // New uploads get the new base too.
    let (_, body) = upload_raw(&d.client, &d.base, 1, unique_png(960)).await;
    assert!(
        body["file_url"]
            .as_str()
            .unwrap()
            .starts_with("https://b.example/files/")
    );
    wait_mirrored(db, &name, &data, "https://b.example", CONVERGE).await;
}

/// The safety belt wired end to end: `media-store gc` with `mysql.url` set keeps
/// expired orphans that chat messages in MySQL still point at, and deletes
/// nothing when it cannot ask.
#[tokio::test]
async fn gc_retention_keeps_media_that_mysql_messages_still_reference() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let mut conn = db.conn(&name);
    conn.query_drop("CREATE TABLE messages (id INT AUTO_INCREMENT PRIMARY KEY, media_id INT NULL)")
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = TestDaemon::start(&data, &dir.path().join("logs"), "");
    let (_, referenced) = upload_raw(&daemon.client, &daemon.base, 1, unique_png(901)).await;
    let (_, unreferenced) = upload_raw(&daemon.client, &daemon.base, 1, unique_png(902)).await;
    conn.exec_drop(
        "INSERT INTO messages (media_id) VALUES (?)",
        (referenced["id"].as_i64(),),
    )
    .unwrap();
    // Not a synchronisation: both media must outlive their 10 ms orphan TTL.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let get = |id: &serde_json::Value| daemon.url(&format!("/v1/media/{id}"));

    // MySQL unreachable: "unknown", so retention deletes none of them.
    let dead = format!(
        "[retention]\norphan_ttl = \"10ms\"\n[mysql]\nurl = \"mysql://root@127.0.0.1:1/{name}\"\nconnect_timeout_ms = 500\n"
    );
    let (code, out, err) = run_cli(&data, &dead, &["gc", "--json", "--grace", "0s"]);
    // An error (2), not a clean run (0): "unknown" is never "unreferenced".
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("deleted none"), "{out}{err}");
    assert_eq!(
        get_json(&daemon.client, &get(&referenced["id"])).await.0,
        200,
        "{out}{err}"
    );
    assert_eq!(
        get_json(&daemon.client, &get(&unreferenced["id"])).await.0,
        200,
        "{out}{err}"
    );

    let live = format!(
        "[retention]\norphan_ttl = \"10ms\"\n[mysql]\nurl = \"{}\"\n",
        db.tcp_url(&name)
    );
    let (code, out, err) = run_cli(&data, &live, &["gc", "--json", "--grace", "0s"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        get_json(&daemon.client, &get(&referenced["id"])).await.0,
        200,
        "kept: a message references it"
    );
    assert_eq!(
        get_json(&daemon.client, &get(&unreferenced["id"])).await.0,
        404,
        "expired orphan deleted"
    );
}
