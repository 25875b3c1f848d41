//! Issue #12 (operations): log format, request log and ids, metrics, limits.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::*;

/// Reads from `conn` until the peer closes it or `limit` passes; returns what
/// arrived and whether it was closed.
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut got = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), false),
        }
    }
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// Reads one HTTP/1.1 response (headers and a Content-Length body) from `conn`.
async fn read_response(conn: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// The value of the sample `name{...labels...}` in a Prometheus text page
/// (every label given must be on the line).
fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (key, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            (key == name || key.starts_with(&format!("{name}{{")))
                && labels.iter().all(|lab| key.contains(lab))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test]
async fn logs_in_a_file_have_no_colour_and_under_systemd_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // stderr is a file here (not a terminal): text without ANSI codes.
    let mut d = TestDaemon::start(&data, &dir.path().join("text"), "");
    let (status, _) = get_json(&d.client, &d.url("/v1/media/1")).await;
    assert_eq!(status, 404);
    d.wait_for_log("media_store::access", Duration::from_secs(10))
        .await;
    assert!(d.terminate().success());
    let logs = d.logs();
    assert!(!logs.contains('\x1b'), "ANSI escape in a log file:\n{logs}");
    drop(d);

    // Under systemd (JOURNAL_STREAM set), by default: one JSON object a line.
    let journal = std::path::Path::new("8:123456");
    let mut d = TestDaemon::start_with_env(
        &data,
        &dir.path().join("journal"),
        "",
        &[("JOURNAL_STREAM", journal)],
    );
    let (status, _) = get_json(&d.client, &d.url("/v1/media/1")).await;
    assert_eq!(status, 404);
    d.wait_for_log("media_store::access", Duration::from_secs(10))
        .await;
    assert!(d.terminate().success());
    let stderr = std::fs::read_to_string(dir.path().join("journal/stderr.log")).unwrap();
    assert!(!stderr.contains('\x1b'), "{stderr}");
    let mut access = 0;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        if v["target"] == "media_store::access" {
            access += 1;
            assert_eq!(v["route"], "/v1/media/{id}", "{v}");
            assert_eq!(v["status"], 404, "{v}");
            assert!(v["span"]["id"].is_string(), "request id on the line: {v}");
        }
    }
    assert_eq!(access, 1, "{stderr}");
    drop(d);

    // log_format = "text" under systemd: text, still without colour.
    let d = TestDaemon::start_with_env(
        &data,
        &dir.path().join("forced"),
        "log_format = \"text\"\n",
        &[("JOURNAL_STREAM", journal)],
    );
    d.wait_for_log("media-store serving", Duration::from_secs(10))
        .await;
    let stderr = std::fs::read_to_string(dir.path().join("forced/stderr.log")).unwrap();
    assert!(
        !stderr.trim_start().starts_with('{') && !stderr.contains('\x1b'),
        "{stderr}"
    );
}

#[tokio::test]
async fn every_request_logs_one_line_with_its_id_and_never_a_signature() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = TestDaemon::start(&data, &dir.path().join("run"), "");
    let png = unique_png(1);
    let media = upload_ok(&d.client, &d.base, 3, png.clone()).await;
    let url = signed_url(&d.client, &d.base, media["id"].as_i64().unwrap(), json!({})).await;
    let sig = url.split("sig=").nth(1).unwrap().to_owned();
    // A client's id is echoed and logged.
    let resp = d
        .client
        .get(&url)
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-request-id"), "client-id-42");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), png.as_slice());
    // Without one, or with a bad one, the daemon makes one.
    let resp = d
        .client
        .get(d.url("/healthz"))
        .header("x-request-id", "bad id\twith space")
        .send()
        .await
        .unwrap();
    let made = header(&resp, "x-request-id").to_owned();
    assert_eq!(made.len(), 16, "{made}");
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
    d.wait_for_log(&made, Duration::from_secs(10)).await;
    let logs = d.logs();
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("media_store::access"))
        .collect();
    // upload, sign, download, healthz
    assert_eq!(access.len(), 4, "{logs}");
    let download = access
        .iter()
        .find(|l| l.contains("client-id-42"))
        .expect("the download's line has the client's id");
    for part in [
        "route=/files/{id}",
        "status=200",
        &format!("bytes_out={}", png.len()),
        "duration_ms=",
        &format!("path=/files/{}", media["id"]),
    ] {
        assert!(download.contains(part), "{part} not in {download}");
    }
    let upload = access.iter().find(|l| l.contains("status=201")).unwrap();
    assert!(
        upload.contains(&format!("bytes_in={}", png.len())),
        "{upload}"
    );
    assert!(upload.contains("route=/v1/media"), "{upload}");
    assert!(
        !logs.contains(&sig),
        "the signature leaked into the log:\n{logs}"
    );
    assert!(!logs.contains("sig="), "{logs}");
    assert!(!logs.contains(TOKEN), "the token leaked into the log");
}

#[tokio::test]
async fn metrics_cover_requests_uploads_index_gc_and_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = TestDaemon::start(
        &data,
        &dir.path().join("run"),
        "[gc]\ninterval = \"300ms\"\n",
    );
    let png = unique_png(7);
    let first = upload_ok(&d.client, &d.base, 1, png.clone()).await;
    let again = upload_ok(&d.client, &d.base, 2, png.clone()).await;
    assert_eq!(again["deduplicated"], true);
    let other = upload_ok(&d.client, &d.base, 1, unique_png(8)).await;
    let url = signed_url(&d.client, &d.base, first["id"].as_i64().unwrap(), json!({})).await;
    let body = d
        .client
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), png.len());
    assert_eq!(
        delete_media(&d.client, &d.base, other["id"].as_i64().unwrap()).await,
        204
    );
    let (status, _) = get_json(&d.client, &d.url("/nowhere")).await;
    assert_eq!(status, 404);
    // A background GC run has finished.
    let mut page = String::new();
    for _ in 0..100 {
        page = metrics_text(&d.client, &d.url("/metrics")).await;
        if sample(&page, "media_store_gc_runs_total", &["result=\"ok\""]).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = |name: &str, labels: &[&str]| {
        sample(&page, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{page}"))
    };
    let len = png.len() as f64;
    let upload = ["route=\"/v1/media\"", "status=\"201\""];
    assert_eq!(v("media_store_http_requests_total", &upload), 3.0);
    assert_eq!(
        v(
            "media_store_http_requests_total",
            &["route=\"/files/{id}\"", "status=\"200\""]
        ),
        1.0
    );
    assert_eq!(
        v(
            "media_store_http_requests_total",
            &["route=\"unmatched\"", "status=\"404\""]
        ),
        1.0
    );
    assert_eq!(
        v(
            "media_store_http_request_duration_seconds_count",
            &["route=\"/v1/media\""]
        ),
        3.0
    );
    assert!(
        page.contains(
            "media_store_http_request_duration_seconds_bucket{route=\"/files/{id}\",le=\"0.005\"}"
        ),
        "latency is a histogram with buckets:\n{page}"
    );
    assert!(v("media_store_http_received_bytes_total", &[]) >= 3.0 * len - 100.0);
    assert!(v("media_store_http_sent_bytes_total", &[]) >= len);
    assert_eq!(v("media_store_uploads_total", &["result=\"stored\""]), 2.0);
    assert_eq!(
        v("media_store_uploads_total", &["result=\"deduplicated\""]),
        1.0
    );
    assert_eq!(v("media_store_dedup_saved_bytes_total", &[]), len);
    let blobs = v("media_store_blobs", &[]);
    assert!((1.0..=2.0).contains(&blobs), "{blobs}");
    assert!(v("media_store_blob_bytes", &[]) >= len);
    assert!(v("media_store_index_writer_batch_size_count", &[]) >= 4.0);
    assert!(v("media_store_index_writer_batch_size_sum", &[]) >= 4.0);
    let commits = v("media_store_index_writer_commit_seconds_count", &[]);
    assert!(commits >= 4.0);
    assert!(v("media_store_index_writer_commit_seconds_sum", &[]) < commits * 5.0);
    // This scrape's own connection at least.
    assert!(v("media_store_http_open_connections", &[]) >= 1.0);
    assert_eq!(v("media_store_http_uploads_in_progress", &[]), 0.0);
    assert!(v("media_store_gc_runs_total", &["result=\"ok\""]) >= 1.0);
    assert!(v("media_store_gc_run_seconds_count", &[]) >= 1.0);
    assert!(v("media_store_gc_last_run_timestamp_seconds", &[]) > 1.7e9);
    // Every family the shipped Grafana dashboard queries is exported (the
    // mirror's need MySQL; the integrity and failure counters appear on
    // their first event).
    let dashboard = include_str!("../../docs/grafana-dashboard.json");
    let mut queried: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("media_store_"))
        .map(|w| {
            w.trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count")
        })
        .collect();
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 20, "{queried:?}");
    for name in queried {
        let on_first_event = [
            "media_store_corrupt_reads_total",
            "media_store_blobs_healed_total",
            "media_store_index_writer_failed_batches_total",
            "media_store_rendition_render_seconds",
            "media_store_renditions_rendered_total",
        ];
        // `media-store fsck` runs reach /metrics once one has run
        // (`metrics_show_cli_gc_and_fsck_runs_and_blobs_by_root`); the S3
        // families need a bucket (`s3::uploads_and_downloads_through_s3_…`).
        if name.starts_with("media_store_mysql_")
            || name.starts_with("media_store_s3_")
            || name.starts_with("media_store_fsck_")
            || on_first_event.contains(&name)
        {
            continue;
        }
        assert!(
            page.lines().any(|l| l.starts_with(name)),
            "the dashboard queries {name}, which /metrics does not have:\n{page}"
        );
    }
    for family in [
        "media_store_gc_blobs_deleted_total",
        "media_store_gc_freed_bytes_total",
        "media_store_archive_blobs_moved_total",
    ] {
        assert!(v(family, &[]) >= 0.0);
    }
}

/// `media-store gc` and `media-store fsck` run in processes of their own;
/// what they did reaches the daemon's `/metrics` through the index (issue
/// #12, point 6: "GC, archival and fsck results and durations"), and the
/// stored-blob gauges are split by root (the archive's figures as of the last
/// GC run, the primary's the rest).
#[tokio::test]
async fn metrics_show_cli_gc_and_fsck_runs_and_blobs_by_root() {
    let dir = tempfile::tempdir().unwrap();
    let (data, root) = (dir.path().join("data"), dir.path().join("archive"));
    std::fs::create_dir(&root).unwrap();
    let toml = format!(
        "[archive]\nroot = {:?}\nafter_days = 0\n",
        root.display().to_string()
    );
    let (code, out, err) = run_cli(&data, &toml, &["init-archive"]);
    assert_eq!(code, 0, "{out}{err}");
    let mut d = TestDaemon::start(&data, &dir.path().join("run"), &toml);
    let (a, b, c) = (unique_png(21), unique_png(22), unique_png(23));
    for body in [&a, &b] {
        upload_ok(&d.client, &d.base, 1, body.clone()).await;
    }
    let (code, out, err) = run_cli(&data, &toml, &["gc", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["blobs_archived"], 2, "{out}");
    assert_eq!(json_of(&out)["archive_blobs"], 2, "{out}");
    upload_ok(&d.client, &d.base, 1, c.clone()).await;
    let (code, out, err) = run_cli(&data, &toml, &["fsck", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    // Damage the one primary blob: a second fsck finds it and repairs.
    let mut bytes = c.clone();
    bytes[40] ^= 0xff;
    std::fs::write(blob_path(&data, &c), &bytes).unwrap();
    let (code, out, err) = run_cli(&data, &toml, &["fsck", "--repair", "--json"]);
    assert_eq!(code, 1, "{out}{err}");
    d.accept_damage("fsck quarantined a blob damaged on purpose");

    let page = metrics_text(&d.client, &d.url("/metrics")).await;
    let v = |name: &str, labels: &[&str]| {
        sample(&page, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{page}"))
    };
    let archive = ["root=\"archive\""];
    let primary = ["root=\"primary\""];
    assert_eq!(v("media_store_blobs", &archive), 2.0);
    assert_eq!(v("media_store_blobs", &primary), 1.0);
    assert_eq!(
        v("media_store_blob_bytes", &archive),
        (a.len() + b.len()) as f64
    );
    assert_eq!(v("media_store_blob_bytes", &primary), c.len() as f64);
    let cli = ["source=\"cli\""];
    assert_eq!(
        v("media_store_gc_runs_total", &["result=\"ok\"", cli[0]]),
        1.0
    );
    assert_eq!(v("media_store_archive_blobs_moved_total", &cli), 2.0);
    assert!(v("media_store_gc_last_run_timestamp_seconds", &cli) > 1.7e9);
    assert!(v("media_store_gc_last_run_duration_seconds", &cli) >= 0.0);
    assert_eq!(v("media_store_fsck_runs_total", &["result=\"clean\""]), 1.0);
    assert_eq!(
        v("media_store_fsck_runs_total", &["result=\"problems\""]),
        1.0
    );
    assert_eq!(v("media_store_fsck_quarantined_total", &[]), 1.0);
    assert_eq!(v("media_store_fsck_media_marked_total", &[]), 1.0);
    assert_eq!(v("media_store_fsck_last_blobs_checked", &[]), 3.0);
    assert_eq!(
        v("media_store_fsck_last_problems", &["kind=\"corrupt\""]),
        1.0
    );
    assert!(v("media_store_fsck_last_run_timestamp_seconds", &[]) > 1.7e9);
    assert!(
        v(
            "media_store_lifecycle_last_write_lock_held_max_seconds",
            &["command=\"fsck\""]
        ) > 0.0
    );
    // Previews: the worker queue is exported; once the uploads' background
    // probes are done, nothing waits or runs.
    assert!(v("media_store_preview_jobs_queued", &[]) >= 0.0);
    let mut idle = false;
    for _ in 0..100 {
        let page = metrics_text(&d.client, &d.url("/metrics")).await;
        let jobs = |name| sample(&page, name, &[]).unwrap();
        if jobs("media_store_preview_jobs_queued") == 0.0
            && jobs("media_store_preview_jobs_running") == 0.0
        {
            idle = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        idle,
        "preview jobs still counted 10 s after the last upload"
    );
}

#[tokio::test]
async fn metrics_access_follows_the_metrics_section() {
    let app = TestApp::start_with("[metrics]\ntoken = \"scrape-secret\"\n").await;
    let get = |auth: Option<&str>| {
        let mut req = app.client.get(app.url("/metrics"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        req.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some(&bearer())).await.unwrap().status(), 401);
    assert_eq!(
        get(Some("Bearer scrape-secret")).await.unwrap().status(),
        200
    );
    app.stop().await;

    // Loopback only: the test client is on 127.0.0.1; the Unix socket is not.
    let app = TestApp::start_with_socket("[metrics]\nloopback_only = true\n").await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let socket = app.socket.clone().unwrap();
    let mut conn = tokio::net::UnixStream::connect(&socket).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    app.stop().await;
}

#[tokio::test]
async fn a_client_slow_to_send_its_headers_is_disconnected() {
    let app = TestApp::start_with("[limits]\nheader_read_timeout = \"500ms\"\n").await;
    let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "the connection is still open after 5 s");
    assert!(started.elapsed() < Duration::from_secs(3));
    // An idle keep-alive connection goes the same way.
    let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "an idle keep-alive connection is closed");
    app.stop().await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_its_connection_closed() {
    let app = TestApp::start_with("[limits]\nbody_read_timeout = \"500ms\"\n").await;
    let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
    let head = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
         Content-Length: 5000\r\n\r\nabcd",
        bearer()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(closed);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(tmp_files(&app.data), 0, "the staging file is gone");
    // A presigned upload is cut the same way.
    let url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 1, "ttl_secs": 60, "max_bytes": 100000}),
    )
    .await;
    let path = url.trim_start_matches(&app.base).to_owned();
    let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
    let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\nabcd");
    conn.write_all(head.as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(closed);
    app.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_get_503_with_retry_after() {
    let app = TestApp::start_with("[limits]\nmax_connections = 3\nretry_after_secs = 7\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_response(&mut conn).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(conn);
    }
    let mut conn = TcpStream::connect(host_port(&app.base)).await.unwrap();
    let (answer, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 7"),
        "{answer}"
    );
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(closed);
    // One goes: a new client is served again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        if let Ok(resp) = app.client.get(app.url("/healthz")).send().await
            && resp.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served);
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn uploads_over_the_concurrency_cap_get_503() {
    let app = TestApp::start_with("[limits]\nmax_concurrent_uploads = 1\n").await;
    let video = fake_mp4(2 * 1024 * 1024, 1);
    let slow = spawn_upload(
        &app.client,
        &app.base,
        1,
        paced_body(video.into(), 64 * 1024, Duration::from_millis(20)),
    );
    wait_until(Duration::from_secs(10), "the slow upload in tmp/", || {
        staging_bytes(&app.data) > 0
    })
    .await;
    let resp = app
        .client
        .post(app.url("/v1/media?uploader_id=2"))
        .header("authorization", bearer())
        .body(unique_png(1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), "1");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "too_many_uploads");
    assert_eq!(slow.await.unwrap().unwrap().status(), 201);
    upload_ok(&app.client, &app.base, 2, unique_png(1)).await;
    app.stop().await;
}

#[tokio::test]
async fn each_uploader_is_held_to_its_upload_rate() {
    let app = TestApp::start_with("[limits]\nuploads_per_minute = 2\n").await;
    upload_ok(&app.client, &app.base, 1, unique_png(1)).await;
    upload_ok(&app.client, &app.base, 1, unique_png(2)).await;
    let resp = app
        .client
        .post(app.url("/v1/media?uploader_id=1"))
        .header("authorization", bearer())
        .body(unique_png(3))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let wait: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Presigned uploads count for their uploader too.
    let url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 1, "ttl_secs": 60, "max_bytes": 100000}),
    )
    .await;
    let resp = app
        .client
        .put(&url)
        .body(unique_png(4))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    // Another uploader is not affected.
    upload_ok(&app.client, &app.base, 2, unique_png(5)).await;
    app.stop().await;
}

/// Every response in `text` (each with a `Content-Length` body), in order:
/// (status, head in lower case, body).
fn responses(text: &str) -> Vec<(u16, String, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = rest[..end].to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let body_end = (end + 4 + len).min(rest.len());
        out.push((status, head, rest[end + 4..body_end].to_owned()));
        rest = &rest[body_end..];
    }
    out
}

/// Asserts that `r` is our JSON refusal with `status` and `code`, closing the connection.
fn assert_refusal(r: &(u16, String, String), status: u16, code: &str) {
    assert_eq!(r.0, status, "{r:?}");
    assert!(r.1.contains("content-type: application/json"), "{r:?}");
    assert!(r.1.contains("connection: close"), "{r:?}");
    assert!(r.1.contains("x-request-id:"), "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.2).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().len() > 20, "{v}");
}

/// Issue #12, point 5: hyper refuses some request heads itself, before any
/// code of ours runs, with an empty body (a `Content-Length` that overflows,
/// is negative or disagrees with another, a malformed header line, too many
/// headers, an overlong target). The daemon reads each head first
/// (`http::head`) and answers those with its JSON envelope instead; requests
/// before it on the same connection, kept alive or pipelined, are answered
/// first and in order, and a body that merely contains such text is a body.
#[tokio::test]
async fn request_heads_hyper_would_refuse_get_our_json_answer_after_earlier_requests() {
    let app = TestApp::start().await;
    let addr = host_port(&app.base);
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let long_target = format!("/v1/media?x={}", "a".repeat(70_000));
    let cases: Vec<(String, String, u16, &str)> = vec![
        (
            "/v1/media?uploader_id=1".into(),
            "Content-Length: 99999999999999999999999\r\n".into(),
            400,
            "bad_header",
        ),
        (
            "/v1/media?uploader_id=1".into(),
            "Content-Length: -1\r\n".into(),
            400,
            "bad_header",
        ),
        (
            "/v1/media?uploader_id=1".into(),
            "Content-Length: 5\r\nContent-Length: 6\r\n".into(),
            400,
            "bad_header",
        ),
        (
            "/healthz".into(),
            "Bad Header: x\r\n".into(),
            400,
            "bad_request",
        ),
        ("/healthz".into(), many, 431, "headers_too_large"),
        (long_target, String::new(), 414, "uri_too_long"),
    ];
    for (target, headers, status, code) in &cases {
        let mut conn = TcpStream::connect(&addr).await.unwrap();
        let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let (text, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
        assert!(closed, "{code}: the connection stays open: {text}");
        let got = responses(&text);
        assert_eq!(got.len(), 1, "{text}");
        assert_refusal(&got[0], *status, code);
    }

    // Kept alive: one request answered, then the bad head on the same connection.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut conn).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    conn.write_all(b"POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n")
        .await
        .unwrap();
    let (text, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "{text}");
    assert_refusal(&responses(&text)[0], 400, "bad_header");

    // Pipelined in one write: an upload whose body holds text that looks
    // like a bad head (it is a body: the framing follows Content-Length), a
    // download of its metadata, then a bad head, then bytes never read.
    let mut png = unique_png(31);
    png.extend_from_slice(b"\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    let auth = bearer();
    let mut bytes = format!(
        "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: {}\r\n\r\n",
        png.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&png);
    bytes.extend_from_slice(
        format!("GET /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n")
            .as_bytes(),
    );
    bytes.extend_from_slice(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1e9\r\n\r\n");
    bytes.extend_from_slice(&[b'z'; 4096]);
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(&bytes).await.unwrap();
    let (text, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    assert!(closed, "{text}");
    let got = responses(&text);
    assert_eq!(got.len(), 3, "{text}");
    assert_eq!(got[0].0, 201, "{:?}", got[0]);
    let stored: serde_json::Value = serde_json::from_str(&got[0].2).unwrap();
    assert_eq!(
        stored["blake3"],
        blake3::hash(&png).to_hex().as_str(),
        "the whole body was the upload"
    );
    assert_eq!(got[1].0, 200, "{:?}", got[1]);
    assert!(got[1].2.contains(stored["blake3"].as_str().unwrap()));
    assert_refusal(&got[2], 400, "bad_header");

    // After a chunked body the daemon stops reading heads ahead of hyper (it
    // does not follow chunked framing): hyper's own answer stands there,
    // still a 4xx.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(
        format!(
            "POST /v1/media?uploader_id=1 HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            unique_png(32).len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(&unique_png(32)).await.unwrap();
    conn.write_all(b"\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
    let got = responses(&text);
    assert_eq!(got[0].0, 201, "{text}");
    assert_eq!(got[1].0, 400, "{text}");
}
