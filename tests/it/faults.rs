//! Fault suite (issue #12, point 10): crashes at random points of mixed
//! traffic, a data disk that fills up, thousands of slow connections, and
//! hostile requests. Bounded, loopback only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::*;

/// Rounds per crash test (two tests: at least 200 in all); `FAULT_ROUNDS` overrides.
fn rounds() -> u64 {
    std::env::var("FAULT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

/// What the clients were told: uploads acknowledged (201) and not deleted
/// since, by media id, with their content's hash.
#[derive(Default)]
struct Acknowledged {
    live: HashMap<i64, blake3::Hash>,
    /// Deletes sent whose answer may not have arrived: their media may be either way.
    uncertain: Vec<i64>,
    /// Uploads acknowledged in all (deleted since or not).
    total: u64,
}

/// One round's traffic: `clients` tasks uploading (new and already stored
/// content), deleting acknowledged media, until the daemon dies.
async fn traffic(
    base: String,
    acked: Arc<Mutex<Acknowledged>>,
    seed: u64,
    big: bool,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    // Built before the round's kill timer starts: a client costs about 50 ms
    // of CPU in a debug build (rustls' configuration, since object_store came
    // in), and six of them built inside the tasks took most of the 10-300 ms
    // before the kill, so that hardly any upload was acknowledged.
    let clients: Vec<reqwest::Client> = (0..6).map(|_| reqwest::Client::new()).collect();
    for (c, client) in (0..6u64).zip(clients) {
        let (base, acked) = (base.clone(), acked.clone());
        tasks.spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 31 + c);
            for n in 0..1000u64 {
                let roll: u32 = rng.random_range(0..12);
                if roll < 2 {
                    let victim = {
                        let mut a = acked.lock().unwrap();
                        let ids: Vec<i64> = a.live.keys().copied().collect();
                        if ids.is_empty() {
                            continue;
                        }
                        let id = ids[rng.random_range(0..ids.len())];
                        a.live.remove(&id);
                        a.uncertain.push(id);
                        id
                    };
                    let url = format!("{base}/v1/media/{victim}");
                    match client
                        .delete(url)
                        .header("authorization", bearer())
                        .send()
                        .await
                    {
                        Ok(r) => {
                            assert!(
                                r.status() == 204 || r.status() == 404,
                                "delete answered {}",
                                r.status()
                            );
                            acked.lock().unwrap().uncertain.retain(|&i| i != victim);
                        }
                        Err(_) => return, // the daemon is gone
                    }
                } else {
                    // A few contents come back again and again (dedup racing GC).
                    let content = if roll < 6 {
                        unique_png(rng.random_range(0..8))
                    } else if big {
                        fake_mp4(rng.random_range(64..512) * 1024, seed * 1000 + c * 100 + n)
                    } else {
                        unique_png(1_000_000 + seed * 10_000 + c * 1000 + n)
                    };
                    let hash = blake3::hash(&content);
                    let sent = client
                        .post(format!("{base}/v1/media?uploader_id={}", c + 1))
                        .header("authorization", bearer())
                        .body(content)
                        .send()
                        .await;
                    let Ok(resp) = sent else { return };
                    let status = resp.status().as_u16();
                    let Ok(v) = resp.json::<serde_json::Value>().await else {
                        return;
                    };
                    assert!(
                        status == 201 || status == 503,
                        "upload answered {status}: {v}"
                    );
                    if status == 201 {
                        let id = v["id"].as_i64().unwrap();
                        let mut a = acked.lock().unwrap();
                        a.live.insert(id, hash);
                        a.total += 1;
                    }
                }
            }
        });
    }
    tasks
}

/// After a crash: `fsck` finds nothing, and every acknowledged upload has its
/// row and its whole blob.
fn check_after_crash(data: &Path, acked: &Acknowledged, round: u64) {
    let (code, out, err) = run_cli(data, "", &["fsck", "--json"]);
    assert_eq!(code, 0, "round {round}: fsck is not clean:\n{out}\n{err}");
    let index = index(data);
    for (id, hash) in &acked.live {
        let stored: Vec<u8> = index
            .query_row("SELECT hash FROM media WHERE id = ?1", [id], |r| r.get(0))
            .unwrap_or_else(|e| panic!("round {round}: acknowledged media {id} lost: {e}"));
        assert_eq!(
            stored.as_slice(),
            hash.as_bytes(),
            "round {round}: media {id}"
        );
        let bytes = read_stored_blob(data, None, hash)
            .unwrap_or_else(|e| panic!("round {round}: blob of media {id} lost: {e}"));
        assert_eq!(
            blake3::hash(&bytes),
            *hash,
            "round {round}: blob of {id} damaged"
        );
    }
}

async fn crash_rounds(big: bool, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The daemon's own GC runs all the time, with no grace: collection races
    // uploads of the same content and deletes.
    let config = "[gc]\ninterval = \"20ms\"\ngrace = \"0s\"\n";
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let total = rounds();
    for round in 0..total {
        let logs = dir.path().join("logs");
        let _ = std::fs::remove_dir_all(&logs);
        let mut d = TestDaemon::start(&data, &logs, config);
        d.accept_damage("killed with -9; checked by fsck and the acknowledged uploads instead");
        let mut tasks = traffic(d.base.clone(), acked.clone(), seed * 1000 + round, big).await;
        // Kill at a random point of the traffic.
        tokio::time::sleep(Duration::from_millis(rng.random_range(10..300))).await;
        d.kill9();
        while let Some(joined) = tasks.join_next().await {
            joined.expect("a client task panicked");
        }
        drop(d);
        let acked = acked.lock().unwrap();
        check_after_crash(&data, &acked, round);
    }
    // A last clean start: every acknowledged upload downloads whole.
    let d = TestDaemon::start(&data, &dir.path().join("last"), "");
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    // The kills came in the middle of real traffic, round after round.
    assert!(
        acked.total >= total,
        "only {} uploads acknowledged in {total} rounds",
        acked.total
    );
    for (id, hash) in acked.live.iter().take(50) {
        let body = download(&d.client, &d.base, *id).await;
        assert_eq!(blake3::hash(&body), *hash);
    }
    eprintln!(
        "{total} kill -9 rounds in {:?}; {} uploads acknowledged, the {} not deleted since intact",
        started.elapsed(),
        acked.total,
        acked.live.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_small_uploads_deletes_and_gc_loses_nothing_acknowledged() {
    crash_rounds(false, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_large_uploads_deletes_and_gc_loses_nothing_acknowledged() {
    crash_rounds(true, 2).await;
}

/// A small ext4 file system on a loop device (tmpfs where loop devices are
/// missing), mounted for one test; unmounted on drop.
struct SmallFs {
    path: PathBuf,
    kind: &'static str,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(megabytes: u32) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let image = dir.path().join("disk.img");
        let ext4 = std::fs::File::create(&image)
            .and_then(|f| f.set_len(u64::from(megabytes) << 20))
            .is_ok()
            && Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
                .arg(&image)
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
        if ext4 {
            return SmallFs {
                path,
                kind: "ext4",
                _dir: dir,
            };
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a small file system (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs {
            path,
            kind: "tmpfs",
            _dir: dir,
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn a_data_disk_that_fills_up_refuses_uploads_and_recovers() {
    let disk = SmallFs::mount(48);
    eprintln!("small file system: {}", disk.kind);
    let data = disk.path.join("data");
    // Ballast that gives the space back later.
    let ballast = disk.path.join("ballast");
    std::fs::write(&ballast, vec![7u8; 12 << 20]).unwrap();
    let app = TestApp::start_in(&data, "").await;
    let mut stored = Vec::new();
    let mut refused = 0;
    for i in 0..200u64 {
        let content = fake_mp4(1 << 20, 50_000 + i);
        let (status, v) = upload_raw(&app.client, &app.base, 1, content.clone()).await;
        match status {
            201 => stored.push((v["id"].as_i64().unwrap(), content)),
            507 => {
                assert_eq!(v["error"]["code"], "disk_full", "{v}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("upload {i} on a filling disk answered {other}: {v}"),
        }
    }
    assert_eq!(refused, 3, "the disk never filled up");
    assert!(stored.len() >= 5, "only {} uploads fitted", stored.len());
    // No partial blob, no staging debris, a consistent index.
    assert_eq!(tmp_files(&data), 0, "staging files left behind");
    assert_consistent(&data);
    // Small uploads on a full disk: refused the same way, or stored whole.
    let (status, v) = upload_raw(&app.client, &app.base, 1, unique_png(9)).await;
    assert!(status == 201 || status == 507, "{status} {v}");
    // Downloads and the index keep working.
    for (id, content) in stored.iter().take(3) {
        let body = download(&app.client, &app.base, *id).await;
        assert_eq!(body.as_ref(), content.as_slice());
        let (status, meta) = get_json(&app.client, &app.url(&format!("/v1/media/{id}"))).await;
        assert_eq!(status, 200, "{meta}");
    }
    let (status, list) = get_json(&app.client, &app.url("/v1/media?uploader_id=1")).await;
    assert_eq!(status, 200, "{list}");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(health.status().as_u16() < 500 || health.status() == 503);
    // Space comes back: uploads work again, and deletes and GC too.
    std::fs::remove_file(&ballast).unwrap();
    let content = fake_mp4(1 << 20, 99_999);
    let (status, v) = upload_raw(&app.client, &app.base, 1, content).await;
    assert_eq!(status, 201, "after space came back: {v}");
    for (id, _) in stored.iter().take(4) {
        assert_eq!(delete_media(&app.client, &app.base, *id).await, 204);
    }
    let (code, out, err) = run_cli(&data, "", &["gc", "--grace", "0s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        json_of(&out)["blobs_deleted"].as_u64().unwrap() >= 4,
        "{out}"
    );
    let (code, out, err) = run_cli(&data, "", &["fsck", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    app.stop().await;
}

/// Raises this process's open files limit to its hard limit (the test holds
/// thousands of sockets).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[tokio::test]
async fn two_thousand_slow_or_idle_connections_do_not_keep_others_waiting() {
    raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    let d = TestDaemon::start(&dir.path().join("data"), &dir.path().join("logs"), "");
    let addr = d.base.trim_start_matches("http://").to_owned();
    let png = unique_png(1);
    let media = upload_ok(&d.client, &d.base, 1, png.clone()).await;
    let url = signed_url(&d.client, &d.base, media["id"].as_i64().unwrap(), json!({})).await;
    let mut held = Vec::with_capacity(2000);
    for i in 0..2000 {
        let mut conn = TcpStream::connect(&addr).await.expect("connect");
        match i % 20 {
            // Idle: connected, says nothing.
            0 | 4..=9 => {}
            // Slowloris: half a request head.
            1 | 10..=15 => conn
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap(),
            // An upload whose body stops after 4 of 5,000 bytes (100 of
            // them, under limits.max_concurrent_uploads).
            2 => conn
                .write_all(
                    format!(
                        "POST /v1/media?uploader_id=9 HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\n\
                         Content-Length: 5000\r\n\r\nabcd",
                        bearer()
                    )
                    .as_bytes(),
                )
                .await
                .unwrap(),
            // A download that never reads its answer.
            _ => conn
                .write_all(
                    format!(
                        "GET {} HTTP/1.1\r\nHost: x\r\n\r\n",
                        url.trim_start_matches(&d.base)
                    )
                    .as_bytes(),
                )
                .await
                .unwrap(),
        }
        held.push(conn);
    }
    // Other clients are served, each within a second.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        let body = tokio::time::timeout(Duration::from_secs(1), async {
            client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
        .await
        .expect("served within a second");
        assert_eq!(body.as_ref(), png.as_slice());
        let (status, _) = tokio::time::timeout(
            Duration::from_secs(1),
            upload_raw(
                &client,
                &d.base,
                2,
                unique_png(started.elapsed().as_nanos() as u64),
            ),
        )
        .await
        .expect("upload answered within a second");
        assert_eq!(status, 201);
    }
    let page = metrics_text(&client, &d.url("/metrics")).await;
    let open: f64 = page
        .lines()
        .find_map(|l| l.strip_prefix("media_store_http_open_connections "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(open >= 2000.0, "{open} connections open");
    drop(held);
}

/// Sends `request` as raw bytes on a new connection; returns the status of
/// the answer (0: closed without one). Panics if nothing comes in 5 s.
async fn raw_status(addr: &str, request: &[u8]) -> u16 {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // The peer may close before reading everything (e.g. on a huge header).
    let _ = conn.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => panic!(
                "no answer in 5 s to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            ),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn hostile_requests_get_4xx_never_5xx_or_a_hang() {
    let app = TestApp::start().await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let png = unique_png(3);
    let media = upload_ok(&app.client, &app.base, 1, png.clone()).await;
    let id = media["id"].as_i64().unwrap();
    let signed = sign(&app.client, &app.base, id).await;
    let auth = bearer();
    let get = |target: &str, extra: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{extra}Connection: close\r\n\r\n")
            .into_bytes()
    };
    let upload = |target: &str, headers: &str, body: &[u8]| {
        let mut r = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{headers}Connection: close\r\n\r\n"
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let mut cases: Vec<(String, Vec<u8>, bool)> = Vec::new();
    let mut case = |name: &str, req: Vec<u8>| cases.push((name.to_owned(), req, true));
    // Huge headers and query strings.
    case(
        "1 MiB header",
        get("/healthz", &format!("X-Big: {}\r\n", "a".repeat(1 << 20))),
    );
    case(
        "1000 headers",
        get(
            "/healthz",
            &(0..1000)
                .map(|i| format!("X-{i}: v\r\n"))
                .collect::<String>(),
        ),
    );
    case(
        "1 MiB query",
        get(
            &format!("/v1/media?uploader_id=1&x={}", "b".repeat(1 << 20)),
            "",
        ),
    );
    case(
        "64 KiB cursor",
        get(&format!("/v1/media?cursor={}", "c".repeat(65536)), ""),
    );
    // Paths and ids.
    for target in [
        "/v1/media/../../etc/passwd",
        "/v1/media/..%2f..%2fetc%2fpasswd",
        "/files/..%2F..%2Findex.sqlite3",
        "/files/%2e%2e/%2e%2e/api-token",
        "/v1/media/99999999999999999999999999",
        "/v1/media/-9223372036854775809",
        "/v1/media/1e999",
        "/v1/media/%00",
        "/v1/uploaders/18446744073709551616/usage",
        "/v1/messages/99999999999999999999/media",
        "/v1/media?uploader_id=99999999999999999999",
        "/v1/media?limit=-1",
        "/v1/media?limit=18446744073709551616",
        "/v1/media?since=99999999999999999999",
        "/files/99999999999999999999?exp=1&kid=k&sig=x",
        "/files/1?exp=99999999999999999999999&kid=k1&sig=AAAA",
    ] {
        case(&format!("GET {target}"), get(target, ""));
    }
    // Broken multipart.
    let mp = |ct: &str, body: &[u8]| {
        upload(
            "/v1/media?uploader_id=1",
            &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", body.len()),
            body,
        )
    };
    case(
        "multipart without boundary",
        mp("multipart/form-data", b"--x\r\n\r\n"),
    );
    case(
        "multipart with another boundary",
        mp(
            "multipart/form-data; boundary=abc",
            b"--xyz\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ndata\r\n--xyz--\r\n",
        ),
    );
    case(
        "multipart never closed",
        mp(
            "multipart/form-data; boundary=abc",
            b"--abc\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nhello",
        ),
    );
    case(
        "multipart with a 200-byte boundary",
        mp(
            &format!("multipart/form-data; boundary={}", "q".repeat(200)),
            b"--q\r\n",
        ),
    );
    case(
        "multipart part without headers end",
        mp(
            "multipart/form-data; boundary=abc",
            b"--abc\r\nContent-Disposition: form-data; name=\"file\"",
        ),
    );
    // Content-Length forms.
    for cl in [
        "-5",
        "99999999999999999999999",
        "18446744073709551615",
        "12, 13",
        "0x10",
        " ",
    ] {
        case(
            &format!("Content-Length: {cl}"),
            upload(
                "/v1/media?uploader_id=1",
                &format!("Content-Length: {cl}\r\n"),
                b"abc",
            ),
        );
    }
    case(
        "bad chunk size",
        upload(
            "/v1/media?uploader_id=1",
            "Transfer-Encoding: chunked\r\n",
            b"zz\r\nabc\r\n0\r\n\r\n",
        ),
    );
    // Both: hyper reads the chunked body (RFC 9112 6.3) and closes the
    // connection after; a smuggled second request is never read.
    cases.push((
        "Content-Length and chunked".into(),
        upload(
            "/v1/media?uploader_id=1",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
            b"3\r\nabc\r\n0\r\n\r\n",
        ),
        false,
    ));
    // Ranges: malformed ones are refused (416) or ignored (200), never 5xx.
    for range in [
        "bytes=abc",
        "bytes=5-1",
        "bytes=-",
        "bytes=--1",
        "bytes=99999999999999999999999-",
        "bytes=-99999999999999999999999",
        "bytes=0-1,2-3,4-5",
        "items=0-1",
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=\u{1}",
    ] {
        cases.push((
            format!("Range: {range}"),
            get(&signed, &format!("Range: {range}\r\n")),
            false,
        ));
    }
    let mut failures = Vec::new();
    for (name, request, must_be_4xx) in &cases {
        let status = raw_status(&addr, request).await;
        let ok = if *must_be_4xx {
            (400..500).contains(&status)
        } else {
            (200..500).contains(&status)
        };
        if !ok {
            failures.push(format!("{name}: {status}"));
        }
    }
    // Filenames: non-UTF-8 and control characters are cleaned or refused, never a 5xx.
    for filename in [
        "%FF%FE%FD.png",
        "a%0Ab%0Dc%00.png",
        "..%2F..%2Fetc%2Fpasswd",
        "%1B%5B31mred.png",
    ] {
        let status = raw_status(
            &addr,
            &upload(
                &format!("/v1/media?uploader_id=1&filename={filename}"),
                &format!("Content-Length: {}\r\n", png.len()),
                &png,
            ),
        )
        .await;
        if !(200..500).contains(&status) {
            failures.push(format!("filename {filename}: {status}"));
        }
    }
    let mut body = b"--abc\r\nContent-Disposition: form-data; name=\"file\"; filename=\"\xff\xfe\x01\x1b.png\"\r\n\r\n".to_vec();
    body.extend_from_slice(&png);
    body.extend_from_slice(b"\r\n--abc--\r\n");
    let status = raw_status(&addr, &mp("multipart/form-data; boundary=abc", &body)).await;
    if !(200..500).contains(&status) {
        failures.push(format!("multipart non-UTF-8 filename: {status}"));
    }
    assert!(
        failures.is_empty(),
        "answers out of bounds:\n{}",
        failures.join("\n")
    );
    // And the daemon is fine.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let url = format!("{}{}", app.base, signed);
    let body = app
        .client
        .get(url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.as_ref(), png.as_slice());
    app.stop().await;
}
