//! The MySQL mirror against a real MariaDB (issue 5): sync, deletes, outages,
//! daemon crashes, reconcile, migrations and the GC safety belt; and (issue
//! 10, point 8) the chat backend's own rows: never deleted or overwritten, ids
//! above theirs, `media-store import`, the periodic reconcile.

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
    let metrics = metrics_text(&app.client, &app.url("/metrics")).await;
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
    assert!(text.contains("applied [1, 2, 3]"), "{text}");
    let second = migrate();
    let text = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(
        second.status.success() && text.contains("up to date"),
        "{text}"
    );
    let versions: Vec<u32> = conn
        .query("SELECT version FROM media_store_schema ORDER BY version")
        .unwrap();
    assert_eq!(versions, vec![1, 2, 3]);
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
    let owned: i64 = conn
        .query_first("SELECT count(*) FROM media_store_rows")
        .unwrap()
        .unwrap();
    assert_eq!(owned, 0, "the backend's row is not media-store's");
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

/// The chat deployment's seed table (migration 0001's schema, as the backend's
/// own seed creates it), filled with rows the backend wrote: ids 1..=5 and 1000.
fn seed_backend_rows(conn: &mut mysql::Conn) -> Vec<BackendRow> {
    conn.query_drop(include_str!("../../migrations/mysql/0001_media_files.sql"))
        .unwrap();
    for id in [1, 2, 3, 4, 5, 1000] {
        conn.exec_drop(
            "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at) \
             VALUES (?, ?, ?, 'image/png', FROM_UNIXTIME(?))",
            (
                id,
                70 + id,
                format!("/uploads/{id}.png"),
                1_700_000_000 + id,
            ),
        )
        .unwrap();
    }
    backend_rows(conn)
}

/// (id, uploader_id, file_url, file_type, uploaded_at seconds) of every row
/// media-store does not own.
type BackendRow = (i64, i64, String, String, i64);

fn backend_rows(conn: &mut mysql::Conn) -> Vec<BackendRow> {
    conn.query(
        "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED) \
         FROM media_files f WHERE f.id NOT IN (SELECT id FROM media_store_rows) ORDER BY f.id",
    )
    .or_else(|_| {
        // Before the first migration: no ownership table yet, every row is theirs.
        conn.query(
            "SELECT id, uploader_id, file_url, file_type, CAST(UNIX_TIMESTAMP(uploaded_at) AS SIGNED) \
             FROM media_files ORDER BY id",
        )
    })
    .unwrap()
}

/// media_files minus the backend's rows must equal the index minus `except`.
async fn wait_mirrored_beside(db: &MariaDb, name: &str, data: &Path, base: &str, except: &[i64]) {
    let deadline = Instant::now() + CONVERGE;
    let mut conn = db.conn(name);
    loop {
        let want: Vec<Row> = expected_rows(data, base)
            .into_iter()
            .filter(|r| !except.contains(&r.0))
            .collect();
        let got: Vec<Row> = conn
            .query(
                "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED), f.size, f.blake3 \
                 FROM media_files f JOIN media_store_rows o ON o.id = f.id ORDER BY f.id",
            )
            .unwrap_or_default();
        if want == got && outbox_len(data) == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "media-store's rows did not converge: want {want:?}\ngot {got:?}\noutbox {}",
            outbox_len(data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_rows_survive_enabling_the_mirror_and_are_never_overwritten() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let url = db.tcp_url(&name);
    let base = "https://m.example";
    let mut conn = db.conn(&name);
    let before = seed_backend_rows(&mut conn);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // An index with uploads of its own before the mirror is enabled: its first
    // full reconcile sees the backend's rows as "not in the index".
    let app = TestApp::start_in(&data, "").await;
    let (_, early) = upload_raw(&app.client, &app.base, 9, unique_png(1100)).await;
    app.stop().await;
    assert_eq!(
        early["id"], 1,
        "the index's own first id, below the backend's rows"
    );

    let app = TestApp::start_in(&data, &mysql_toml(&url, base)).await;
    // At once, before the worker may have connected: the first start with this
    // database raised the id floor before serving.
    let (_, a) = upload_raw(&app.client, &app.base, 9, unique_png(1101)).await;
    assert_eq!(a["id"], 1001, "{a}");
    wait_until(
        CONVERGE,
        "the mirror connects and writes media 1001",
        || {
            outbox_len(&data) == 0
                && conn
                    .query_first::<i64, _>("SELECT COUNT(*) FROM media_store_rows")
                    .ok()
                    .flatten()
                    == Some(1)
        },
    )
    .await;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let (_, h) = get_json(&app.client, &app.url("/healthz")).await;
        if h["mysql"]["connected"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "never connected: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The index's media 1 collides with the backend's row 1: reported, never
    // overwritten; the full reconcile of the first connect deleted nothing.
    assert_eq!(backend_rows(&mut conn), before);

    // The backend writes another row, under the id media-store will use next.
    conn.query_drop(
        "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at) \
         VALUES (1002, 99, '/uploads/theirs.png', 'image/png', FROM_UNIXTIME(1700009999))",
    )
    .unwrap();
    let before = backend_rows(&mut conn);
    let (_, b) = upload_raw(&app.client, &app.base, 9, unique_png(1102)).await;
    assert_eq!(b["id"], 1002, "{b}");
    let (_, c) = upload_raw(&app.client, &app.base, 9, unique_png(1103)).await;
    wait_mirrored_beside(db, &name, &data, base, &[1, 1002]).await;
    assert_eq!(backend_rows(&mut conn), before, "a backend row was changed");
    let (_, h) = get_json(&app.client, &app.url("/healthz")).await;
    assert!(h["mysql"]["foreign_conflicts"].as_u64() >= Some(1), "{h}");
    let mine: Vec<i64> = conn
        .query("SELECT id FROM media_store_rows ORDER BY id")
        .unwrap();
    assert_eq!(
        mine,
        vec![a["id"].as_i64().unwrap(), c["id"].as_i64().unwrap()]
    );

    // A full reconcile (the command, daemon running) repairs none of theirs.
    let out = tokio::task::spawn_blocking({
        let (data, url) = (data.clone(), url.clone());
        move || reconcile_cli(&data, &url, false)
    })
    .await
    .unwrap();
    assert_eq!(out.0, 0, "{}", out.1);
    assert!(
        out.1
            .contains("missing=0 extra=0 differing=0 foreign=5 conflicting=2"),
        "{}",
        out.1
    );
    app.stop().await;
    wait_mirror_unlocked(db, &name);
    // And with the daemon stopped, the command sends its own repairs: still none of theirs.
    let (code, out) = reconcile_cli(&data, &url, false);
    assert_eq!(code, 0, "{out}");
    assert_eq!(backend_rows(&mut conn), before);
    // At the next start too (the floor is re-checked at each connect).
    conn.query_drop(
        "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at) \
         VALUES (5000, 99, '/uploads/later.png', 'image/png', FROM_UNIXTIME(1700019999))",
    )
    .unwrap();
    let app = TestApp::start_in(&data, &mysql_toml(&url, base)).await;
    wait_until(CONVERGE, "the floor moves above 5000", || {
        index(&data)
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'media'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            >= 5000
    })
    .await;
    let (_, d) = upload_raw(&app.client, &app.base, 9, unique_png(1104)).await;
    assert_eq!(d["id"], 5001, "{d}");
    wait_mirrored_beside(db, &name, &data, base, &[1, 1002]).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_reconcile_repairs_rows_changed_behind_the_mirrors_back() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let base = "https://m.example";
    let toml = mysql_toml(&db.socket_url(&name), base) + "reconcile_interval = \"1s\"\n";
    let app = TestApp::start_with(&toml).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, body) = upload_raw(&app.client, &app.base, 5, unique_png(1200 + i)).await;
        ids.push(body["id"].as_i64().unwrap());
    }
    wait_mirrored(db, &name, &app.data, base, CONVERGE).await;
    // What a failover to a lagging replica looks like: acknowledged rows are
    // gone or old. Nothing in the index changes, so no outbox entry says so.
    let mut conn = db.conn(&name);
    conn.exec_drop("DELETE FROM media_files WHERE id = ?", (ids[0],))
        .unwrap();
    conn.exec_drop(
        "UPDATE media_files SET file_url = 'https://stale/x', size = 1 WHERE id = ?",
        (ids[1],),
    )
    .unwrap();
    // Repaired without a restart, by the worker's own periodic reconcile.
    wait_mirrored(db, &name, &app.data, base, CONVERGE).await;
    app.stop().await;
}

/// A database an earlier media-store mirrored (schema version 2, no ownership
/// table yet): migration 3 recognises its rows by their blake3, not the
/// backend's.
#[test]
fn upgrade_to_ownership_keeps_rows_an_earlier_media_store_wrote_as_its_own() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let mut conn = db.conn(&name);
    conn.query_drop(include_str!("../../migrations/mysql/0001_media_files.sql"))
        .unwrap();
    conn.query_drop(include_str!(
        "../../migrations/mysql/0002_media_store_columns.sql"
    ))
    .unwrap();
    conn.query_drop(
        "CREATE TABLE media_store_schema (version INT NOT NULL PRIMARY KEY, name VARCHAR(100) NOT NULL, \
         applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .unwrap();
    conn.query_drop(
        "INSERT INTO media_store_schema (version, name) VALUES (1, 'media_files'), (2, 'media_store_columns')",
    )
    .unwrap();
    let hash = blake3::hash(b"x").to_hex().to_string();
    conn.exec_drop(
        "INSERT INTO media_files (id, uploader_id, file_url, file_type, size, blake3) VALUES \
         (1, 1, '/uploads/theirs.png', 'image/png', 0, ''), (2, 1, 'https://m/files/2', 'image/png', 1, ?)",
        (hash,),
    )
    .unwrap();
    let out = Command::new(TestDaemon::binary())
        .args(["migrate", "--mysql", &db.tcp_url(&name)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("applied [3]"),
        "{text}"
    );
    let owned: Vec<i64> = conn.query("SELECT id FROM media_store_rows").unwrap();
    assert_eq!(owned, vec![2]);
}

/// Serves `files` (path -> bytes) over HTTP on 127.0.0.1; returns the port.
async fn serve_files(files: Vec<(&'static str, Vec<u8>)>) -> u16 {
    let mut router = axum::Router::new();
    for (path, bytes) in files {
        router = router.route(path, axum::routing::get(move || async move { bytes }));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    port
}

fn import_cli(data: &Path, url: &str, args: &[&str]) -> (i32, serde_json::Value, String) {
    let config = format!(
        "public_base_url = \"https://m.example\"\n[mysql]\nurl = \"{url}\"\nconnect_timeout_ms = 1000\n"
    );
    let mut all = vec!["import", "--json"];
    all.extend_from_slice(args);
    let (code, out, err) = run_cli(data, &config, &all);
    let report = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, report, format!("{out}{err}"))
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_adopts_local_and_http_rows_under_their_ids_and_reports_the_rest() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let url = db.tcp_url(&name);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let root = dir.path().join("chat");
    std::fs::create_dir_all(root.join("uploads")).unwrap();
    std::fs::write(dir.path().join("secret.png"), unique_png(1300)).unwrap();
    let (a, b, c) = (
        unique_png(1301),
        testdata("document/sample.pdf"),
        unique_png(1302),
    );
    std::fs::write(root.join("uploads/a.png"), &a).unwrap();
    std::fs::write(root.join("uploads/b.pdf"), &b).unwrap();
    std::fs::write(
        root.join("uploads/notes.bin"),
        b"\x00\x01 not a known type \x02",
    )
    .unwrap();
    std::os::unix::fs::symlink("../../secret.png", root.join("uploads/link.png")).unwrap();
    let port = serve_files(vec![("/media/c.png", c.clone())]).await;
    let host = format!("127.0.0.1:{port}");
    let rows: Vec<(i64, String)> = vec![
        (10, "/uploads/a.png".into()), // web path under the root
        (11, format!("{}/uploads/b.pdf", root.display())), // absolute path under the root
        (12, format!("http://{host}/media/c.png")), // http on an allowed host
        (13, "uploads/missing.png".into()), // missing file
        (14, "http://media.example.invalid/x.png".into()), // host not allowed
        (15, "/uploads/notes.bin".into()), // refused: unknown type
        (16, "/uploads/../../secret.png".into()), // escapes with ..
        (17, "/uploads/link.png".into()), // escapes by symlink
        (18, "uploads/a.png".into()),  // same content as 10
    ];
    let mut conn = db.conn(&name);
    conn.query_drop(include_str!("../../migrations/mysql/0001_media_files.sql"))
        .unwrap();
    for (id, file_url) in &rows {
        conn.exec_drop(
            "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at) \
             VALUES (?, ?, ?, 'image/png', FROM_UNIXTIME(?))",
            (id, 100 + id, file_url, 1_700_000_000 + id),
        )
        .unwrap();
    }
    let root_arg = root.display().to_string();
    let args = ["--from-root", &root_arg, "--allow-host", &host];
    let run = |extra: &'static [&'static str]| {
        let (data, url) = (data.clone(), url.clone());
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(extra.iter().map(|s| s.to_string()));
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            import_cli(&data, &url, &refs)
        })
    };
    let unowned = |conn: &mut mysql::Conn| backend_rows(conn);

    // Dry run (on a migrated schema, which it needs): checks the sources,
    // changes nothing.
    let migrated = Command::new(TestDaemon::binary())
        .args(["migrate", "--mysql", &url])
        .output()
        .unwrap();
    assert!(migrated.status.success());
    let (code, report, text) = run(&["--dry-run"]).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(report["dry_run"], true, "{text}");
    let failed_ids: Vec<i64> = report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_i64().unwrap())
        .collect();
    // Dry run does not fetch or sniff, so the unknown type (15) is not found yet.
    assert_eq!(failed_ids, vec![13, 14, 16, 17], "{text}");
    let untouched = unowned(&mut conn);
    assert_eq!(untouched.len(), rows.len());
    assert_eq!(expected_rows(&data, "https://m.example").len(), 0);

    // The import.
    let (code, report, text) = run(&[]).await.unwrap();
    assert_eq!(code, 1, "some rows cannot be adopted: {text}");
    assert_eq!(ids(&report["adopted"]), vec![10, 11, 12, 18], "{text}");
    assert_eq!(report["deduplicated"], 1, "{text}");
    assert_eq!(report["mirror"], "sent", "{text}");
    let failed: Vec<(i64, String)> = report["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_i64().unwrap(),
                f["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let reason = |id: i64| failed.iter().find(|f| f.0 == id).unwrap().1.clone();
    assert_eq!(failed.len(), 5, "{failed:?}");
    assert!(reason(13).contains("no such file"), "{failed:?}");
    assert!(reason(14).contains("not allowed"), "{failed:?}");
    assert!(reason(15).contains("could not be recognised"), "{failed:?}");
    assert!(reason(16).contains("leaves the import root"), "{failed:?}");
    assert!(reason(17).contains("leaves the import root"), "{failed:?}");

    // Same ids and times, content-addressed, and the rows are media-store's now:
    // rewritten by the mirror with the index's values.
    let mirrored: Vec<Row> = {
        let mut c = db.conn(&name);
        c.query(
            "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED), f.size, f.blake3 \
             FROM media_files f JOIN media_store_rows o ON o.id = f.id ORDER BY f.id",
        )
        .unwrap()
    };
    assert_eq!(mirrored, expected_rows(&data, "https://m.example"));
    let hex = |b: &[u8]| blake3::hash(b).to_hex().to_string();
    let want = [
        (10, "image/png", hex(&a)),
        (11, "application/pdf", hex(&b)),
        (12, "image/png", hex(&c)),
        (18, "image/png", hex(&a)),
    ];
    for (row, (id, mime, hash)) in mirrored.iter().zip(want) {
        assert_eq!(row.0, id);
        assert_eq!(row.1, 100 + id, "uploader kept");
        assert_eq!(row.2, format!("https://m.example/files/{id}"));
        assert_eq!(row.3, mime);
        assert_eq!(row.4, 1_700_000_000 + id, "upload time kept");
        assert_eq!(row.6, hash);
    }
    assert!(blob_path(&data, &a).exists() && blob_path(&data, &c).exists());
    assert_eq!(refcount(&data, &hex(&a)), Some(2));
    let failed_rows: Vec<BackendRow> = untouched
        .iter()
        .filter(|r| [13, 14, 15, 16, 17].contains(&r.0))
        .cloned()
        .collect();
    assert_eq!(
        unowned(&mut conn),
        failed_rows,
        "rows not adopted stay as they were"
    );
    assert_consistent(&data);

    // Again: nothing left to adopt, nothing changes.
    let index_before = expected_rows(&data, "https://m.example");
    let (code, report, text) = run(&[]).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(ids(&report["adopted"]), Vec::<i64>::new(), "{text}");
    assert_eq!(ids(&report["resumed"]), Vec::<i64>::new(), "{text}");
    assert_eq!(report["rows"], 5, "{text}");
    assert_eq!(expected_rows(&data, "https://m.example"), index_before);
    assert_eq!(unowned(&mut conn), failed_rows);

    // A run that stopped after storing a file, before the mirror wrote the
    // row (the row still the backend's values, marked as being adopted): the
    // next run only finishes it.
    conn.query_drop(
        "UPDATE media_files SET file_url = '/uploads/b.pdf', file_type = 'application/pdf', size = 0, blake3 = '' \
         WHERE id = 11",
    )
    .unwrap();
    conn.query_drop("UPDATE media_store_rows SET adopting = 1 WHERE id = 11")
        .unwrap();
    let (code, report, text) = run(&[]).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(ids(&report["adopted"]), Vec::<i64>::new(), "{text}");
    assert_eq!(ids(&report["resumed"]), vec![11], "{text}");
    assert_eq!(expected_rows(&data, "https://m.example"), index_before);
    let mirrored_again: Vec<Row> = conn
        .query(
            "SELECT f.id, f.uploader_id, f.file_url, f.file_type, CAST(UNIX_TIMESTAMP(f.uploaded_at) AS SIGNED), f.size, f.blake3 \
             FROM media_files f JOIN media_store_rows o ON o.id = f.id ORDER BY f.id",
        )
        .unwrap();
    assert_eq!(mirrored_again, index_before);
    let adopting: i64 = conn
        .query_first("SELECT COUNT(*) FROM media_store_rows WHERE adopting <> 0")
        .unwrap()
        .unwrap();
    assert_eq!(adopting, 0, "every adoption completed");

    // The daemon serves the adopted files under their ids, and its new uploads
    // go above every id in media_files.
    let d = unique_png(1304);
    std::fs::write(root.join("uploads/d.png"), &d).unwrap();
    conn.query_drop(
        "INSERT INTO media_files (id, uploader_id, file_url, file_type, uploaded_at) \
         VALUES (20, 120, '/uploads/d.png', 'image/png', FROM_UNIXTIME(1700000020))",
    )
    .unwrap();
    let app = TestApp::start_in(&data, &mysql_toml(&url, "https://m.example")).await;
    let (status, media) = get_json(&app.client, &app.url("/v1/media/12")).await;
    assert_eq!(status, 200, "{media}");
    assert_eq!(media["blake3"], hex(&c));
    let (_, new) = upload_raw(&app.client, &app.base, 1, unique_png(1303)).await;
    assert!(new["id"].as_i64() > Some(20), "{new}");
    wait_mirrored_beside(db, &name, &data, "https://m.example", &[]).await;
    assert_eq!(
        unowned(&mut conn),
        [
            failed_rows.clone(),
            vec![(
                20,
                120,
                "/uploads/d.png".into(),
                "image/png".into(),
                1_700_000_020
            )]
        ]
        .concat()
    );

    // Beside the running daemon: its mirror writes the adopted row, and the
    // new media row's own outbox entry is not taken for a collision.
    let (code, report, text) = run(&[]).await.unwrap();
    assert_eq!(code, 1, "{text}");
    assert_eq!(ids(&report["adopted"]), vec![20], "{text}");
    assert_eq!(report["mirror"], "queued", "{text}");
    wait_mirrored_beside(db, &name, &data, "https://m.example", &[]).await;
    assert_eq!(unowned(&mut conn), failed_rows);
    let (_, h) = get_json(&app.client, &app.url("/healthz")).await;
    assert_eq!(h["mysql"]["foreign_conflicts"], 0, "{h}");
    app.stop().await;
}

/// The interval counts from the last full reconcile, kept in the index: a
/// daemon restarted more often than the interval still reconciles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_reconcile_is_not_postponed_by_restarts() {
    let db = MariaDb::shared();
    let name = db.create_db();
    let base = "https://m.example";
    let url = db.socket_url(&name);
    let toml = mysql_toml(&url, base) + "reconcile_interval = \"1h\"\n";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let app = TestApp::start_in(&data, &toml).await;
    let (_, body) = upload_raw(&app.client, &app.base, 5, unique_png(1400)).await;
    let id = body["id"].as_i64().unwrap();
    wait_mirrored(db, &name, &data, base, CONVERGE).await;
    app.stop().await;
    wait_mirror_unlocked(db, &name);
    let mut conn = db.conn(&name);
    conn.exec_drop(
        "UPDATE media_files SET file_url = 'https://stale/x' WHERE id = ?",
        (id,),
    )
    .unwrap();
    // The last full reconcile was two hours ago.
    let two_hours_ago =
        media_store::clock::Clock::now_ms(&media_store::clock::SystemClock) - 2 * 3600 * 1000;
    rusqlite::Connection::open(data.join("index.sqlite3"))
        .unwrap()
        .execute(
            "UPDATE meta SET value = ?1 WHERE key = 'mysql_reconciled_at'",
            [two_hours_ago.to_string()],
        )
        .unwrap();
    let app = TestApp::start_in(&data, &toml).await;
    wait_mirrored(db, &name, &data, base, CONVERGE).await;
    app.stop().await;
}
