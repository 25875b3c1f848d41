//! A real browser: headless Chromium (Debian's `chromium`) driven by
//! playwright-core (tests/it/browser/driver.js) through a page served from
//! another loopback origin than the daemon. The page uploads with `fetch` to a
//! presigned URL (CORS preflight), shows the upload through a signed URL in
//! `<img>`, reads exposed headers, and seeks and plays a video (Range requests).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::extract::{Path as AxPath, State};
use axum::response::Html;
use axum::routing::get;
use serde_json::{Value, json};

use crate::harness::*;

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/browser")
}

fn require(binary: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .any(|dir| dir.join(binary).exists());
    assert!(
        found,
        "`{binary}` is not installed: install the Debian package `{package}` (scripts/test does)"
    );
}

/// Installs playwright-core from package-lock.json once.
fn npm_ci() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .expect("run npm ci");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

/// The node driver and the Chromium it starts, in their own process group so
/// that a failing test kills them all.
struct Driver {
    child: Child,
}

impl Driver {
    fn run(page_url: &str, log: &Path) -> Driver {
        let child = Command::new("node")
            .arg("driver.js")
            .arg(page_url)
            .current_dir(browser_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .process_group(0)
            .spawn()
            .expect("spawn node");
        Driver { child }
    }

    /// Waits (bounded) for the driver's JSON line.
    fn output(mut self, log: &Path) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut out = String::new();
                use std::io::Read;
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let stderr = std::fs::read_to_string(log).unwrap_or_default();
                assert!(status.success(), "driver failed ({status}):\n{stderr}");
                return serde_json::from_str(out.trim())
                    .unwrap_or_else(|e| panic!("driver output {out:?}: {e}\n{stderr}"));
            }
            assert!(
                Instant::now() < deadline,
                "browser test timed out:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
            let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone)]
struct PageState {
    html: String,
    daemon: String,
    png: Vec<u8>,
    client: reqwest::Client,
}

/// The chat backend's part: it holds the token and hands out signed URLs.
async fn sign_for_page(State(s): State<PageState>, AxPath(id): AxPath<i64>) -> axum::Json<Value> {
    let path = sign(&s.client, &s.daemon, id).await;
    axum::Json(json!({"url": format!("{}{path}", s.daemon)}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_uploads_shows_and_seeks_through_signed_urls() {
    require("chromium", "chromium");
    require("node", "nodejs");
    require("npm", "npm");
    npm_ci();

    // The page's origin: another port than the daemon's.
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let page_base = format!("http://{}", page_listener.local_addr().unwrap());
    let app = TestApp::start_with(&format!("[cors]\nallowed_origins = [\"{page_base}\"]\n")).await;

    // The video is uploaded by the service; the browser gets only a signed URL.
    let video = testdata("video/vp9_opus.webm");
    let (status, media) = upload_raw(&app.client, &app.base, 1, video.clone()).await;
    assert_eq!(status, 201);
    let id = media["id"].as_i64().unwrap();
    let video_url = signed_url(&app.client, &app.base, id, json!({})).await;
    let upload_url = presign_upload(
        &app.client,
        &app.base,
        json!({"uploader_id": 7, "ttl_secs": 300, "max_bytes": 10485760}),
    )
    .await;

    let png = testdata("png/rgb8.png");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    let cfg = json!({"uploadUrl": upload_url, "videoUrl": video_url});
    let html = std::fs::read_to_string(browser_dir().join("page.html"))
        .unwrap()
        .replace("/*CFG*/null", &cfg.to_string());
    let state = PageState {
        html,
        daemon: app.base.clone(),
        png: png.clone(),
        client: app.client.clone(),
    };
    let router = axum::Router::new()
        .route(
            "/",
            get(|State(s): State<PageState>| async move { Html(s.html) }),
        )
        .route(
            "/fixture.png",
            get(|State(s): State<PageState>| async move { s.png }),
        )
        .route("/sign/{id}", get(sign_for_page))
        .with_state(state);
    let page_server = tokio::spawn(async move { axum::serve(page_listener, router).await });

    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("driver.log");
    let driver = Driver::run(&format!("{page_base}/"), &log);
    let out = tokio::task::spawn_blocking({
        let log = log.clone();
        move || driver.output(&log)
    })
    .await
    .unwrap();
    page_server.abort();

    let r = &out["result"];
    assert!(
        r["error"].is_null(),
        "page failed: {r}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(r["uploadStatus"], 201, "{r}");
    assert_eq!(r["media"]["uploader_id"], 7);
    assert_eq!(r["media"]["file_type"], "image/png");
    assert_eq!(r["naturalWidth"], width, "{r}");
    assert_eq!(r["naturalHeight"], height, "{r}");
    assert_eq!(r["fetchStatus"], 200);
    assert_eq!(
        r["etag"],
        format!("\"{}\"", r["media"]["blake3"].as_str().unwrap()),
        "ETag must be exposed to the page"
    );
    assert_eq!(r["acceptRanges"], "bytes");
    assert_eq!(r["fetchedBytes"], png.len());
    assert!(r["duration"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["readyStateAfterSeek"].as_u64().unwrap() >= 2, "{r}");

    let responses = out["responses"].as_array().unwrap();
    let video_statuses: Vec<u64> = responses
        .iter()
        .filter(|x| x["url"] == video_url.as_str())
        .map(|x| x["status"].as_u64().unwrap())
        .collect();
    assert!(
        video_statuses.contains(&206),
        "the video was not fetched with Range requests: {video_statuses:?}"
    );
    // The preflighted upload went to the daemon's origin.
    assert!(
        responses
            .iter()
            .any(|x| x["url"] == upload_url.as_str() && x["status"] == 201)
    );
}
