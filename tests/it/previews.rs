//! Renditions (issue #11): signed variant URLs, renditions stored as blobs
//! and shared between identical sources, single flight, GC of renditions with
//! their source, hostile inputs, and the layout metadata of uploads.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// A sample of the preview engine's own test data.
fn engine_data(rel: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("crates/media-preview/tests/data")
        .join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("missing {}: {e}", path.display()))
}

/// A signed URL for `variant` of media `id`, absolute.
async fn variant_url(app: &TestApp, id: i64, variant: &str) -> String {
    signed_url(
        &app.client,
        &app.base,
        id,
        json!({"ttl_secs": 600, "variant": variant}),
    )
    .await
}

/// Uploads `bytes` for `uploader`; returns the new media's id and JSON.
async fn upload_media(app: &TestApp, uploader: i64, bytes: Vec<u8>) -> (i64, serde_json::Value) {
    let media = upload_ok(&app.client, &app.base, uploader, bytes).await;
    (media["id"].as_i64().unwrap(), media)
}

/// `GET` of a freshly signed URL for the `variant` of media `id`.
async fn get_variant(app: &TestApp, id: i64, variant: &str) -> reqwest::Response {
    app.client
        .get(variant_url(app, id, variant).await)
        .send()
        .await
        .unwrap()
}

fn decode(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes)
        .unwrap_or_else(|e| panic!("rendition does not decode: {e}"))
        .to_rgb8()
}

/// The value of a counter with one label in the Prometheus text of `/metrics`.
async fn counter(app: &TestApp, name: &str, label: &str) -> u64 {
    let text = metrics_text(&app.client, &app.url("/metrics")).await;
    let prefix = format!("{name}{{{label}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Polls `GET /v1/media/{id}` until the background probe has filled `field`.
async fn probed(app: &TestApp, id: i64, field: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, v) = get_json(&app.client, &app.url(&format!("/v1/media/{id}"))).await;
        assert_eq!(status, 200, "{v}");
        if v.get(field).is_some() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "media {id} never got {field}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A PNG whose header declares `w`×`h` pixels, with a few bytes of data: a
/// decompression bomb once inflated, refused from its header.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes (stored block).
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0, 0, 1,
        ],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[tokio::test]
async fn a_jpeg_with_exif_orientation_6_gets_an_upright_webp_thumb() {
    let app = TestApp::start().await;
    let rotated = upload_ok(
        &app.client,
        &app.base,
        1,
        engine_data("exif-orientation/Landscape_6.jpg"),
    )
    .await;
    let upright = upload_ok(
        &app.client,
        &app.base,
        1,
        engine_data("exif-orientation/Landscape_1.jpg"),
    )
    .await;
    let mut thumbs = Vec::new();
    for media in [&rotated, &upright] {
        let id = media["id"].as_i64().unwrap();
        let resp = get_variant(&app, id, "thumb").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-type"), "image/webp");
        assert_eq!(header(&resp, "x-content-type-options"), "nosniff");
        assert!(header(&resp, "content-disposition").starts_with("inline"));
        assert!(header(&resp, "content-disposition").contains(".thumb.webp"));
        let etag = header(&resp, "etag").to_owned();
        let bytes = resp.bytes().await.unwrap();
        assert_eq!(etag, format!("\"{}\"", blake3::hash(&bytes).to_hex()));
        assert_eq!(&bytes[..4], b"RIFF");
        thumbs.push(decode(&bytes));
    }
    // Stored 1200×1800 with orientation 6: upright it is 1800×1200.
    for thumb in &thumbs {
        assert_eq!(thumb.dimensions(), (320, 213));
    }
    // Same picture: the rotated source's thumb matches the upright one's.
    let diff: u64 = thumbs[0]
        .as_raw()
        .iter()
        .zip(thumbs[1].as_raw())
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = diff as f64 / thumbs[0].as_raw().len() as f64;
    assert!(
        mean < 12.0,
        "mean difference {mean} per channel: not rotated upright"
    );
    // And the probe saw the upright size too, with a ThumbHash.
    let v = probed(&app, rotated["id"].as_i64().unwrap(), "thumbhash").await;
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(1800), Some(1200))
    );
    assert!(v.get("duration_ms").is_none());
}

#[tokio::test]
async fn a_heic_upload_gets_a_webp_thumb() {
    let app = TestApp::start().await;
    let (id, _) = upload_media(&app, 1, testdata("heic/image.heic")).await;
    let resp = get_variant(&app, id, "thumb").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/webp");
    let thumb = decode(&resp.bytes().await.unwrap());
    let (w, h) = thumb.dimensions();
    assert!(w <= 320 && h <= 320 && w.max(h) > 0, "{w}x{h}");
    let v = probed(&app, id, "width").await;
    assert!(v["width"].as_u64().unwrap() >= u64::from(w));
}

#[tokio::test]
async fn twenty_concurrent_requests_for_a_new_rendition_render_it_once() {
    // A variant of its own: the render counter is per process and per variant.
    let app = TestApp::start_with(
        "[preview.variants.once20]\nfit = \"within\"\nwidth = 200\nheight = 200\nquality = 70\n",
    )
    .await;
    let (id, _) = upload_media(&app, 1, engine_data("exif-orientation/Landscape_1.jpg")).await;
    let url = variant_url(&app, id, "once20").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (app.client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let resp = client.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every client got the same rendition"
    );
    assert_eq!(decode(&bodies[0]).dimensions(), (200, 133));
    assert_eq!(
        counter(
            &app,
            "media_store_renditions_rendered_total",
            "variant=\"once20\""
        )
        .await,
        1
    );
}

#[tokio::test]
async fn identical_content_uploaded_twice_shares_one_rendition() {
    let app = TestApp::start().await;
    let jpeg = engine_data("exif-orientation/Landscape_1.jpg");
    let a = upload_ok(&app.client, &app.base, 1, jpeg.clone()).await;
    let b = upload_ok(&app.client, &app.base, 2, jpeg.clone()).await;
    assert_eq!(b["deduplicated"], true);
    let mut etags = Vec::new();
    for m in [&a, &b] {
        let id = m["id"].as_i64().unwrap();
        let resp = get_variant(&app, id, "preview").await;
        assert_eq!(resp.status(), 200);
        etags.push(header(&resp, "etag").trim_matches('"').to_owned());
    }
    assert_eq!(etags[0], etags[1]);
    let idx = index(&app.data);
    let rows: i64 = idx
        .query_row(
            "SELECT count(*) FROM renditions WHERE variant = 'preview'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);
    // One reference: the rendition row (not one per media).
    assert_eq!(refcount(&app.data, &etags[0]), Some(1));
    assert_eq!(refcount(&app.data, a["blake3"].as_str().unwrap()), Some(2));
}

#[tokio::test]
async fn gc_removes_a_deleted_sources_rendition_blobs_and_fsck_stays_clean() {
    let app = TestApp::start().await;
    let jpeg = engine_data("exif-orientation/Landscape_6.jpg");
    let (id, _) = upload_media(&app, 1, jpeg.clone()).await;
    let mut renditions = Vec::new();
    for variant in ["thumb", "preview", "avatar"] {
        let resp = get_variant(&app, id, variant).await;
        assert_eq!(resp.status(), 200, "{variant}");
        let bytes = resp.bytes().await.unwrap();
        renditions.push(bytes.to_vec());
    }
    for r in &renditions {
        assert!(blob_path(&app.data, r).exists());
    }
    // A still-referenced source keeps its renditions through GC.
    let (code, out, err) = run_cli(&app.data, "", &["gc", "--grace", "0s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["blobs_deleted"], 0);
    assert!(renditions.iter().all(|r| blob_path(&app.data, r).exists()));

    assert_eq!(delete_media(&app.client, &app.base, id).await, 204);
    let (code, out, err) = run_cli(&app.data, "", &["gc", "--grace", "0s", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["blobs_deleted"], 4, "{out}");
    assert!(!blob_path(&app.data, &jpeg).exists());
    for r in &renditions {
        assert!(
            !blob_path(&app.data, r).exists(),
            "rendition blob left behind"
        );
    }
    let rows: i64 = index(&app.data)
        .query_row("SELECT count(*) FROM renditions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    let (code, out, err) = run_cli(&app.data, "", &["fsck", "--json"]);
    assert_eq!(code, 0, "fsck found problems: {out}{err}");
    assert_consistent(&app.data);
}

#[tokio::test]
async fn a_rendition_serves_range_etag_and_304_like_an_original() {
    let app = TestApp::start().await;
    let (id, _) = upload_media(&app, 1, engine_data("exif-orientation/Landscape_1.jpg")).await;
    let url = variant_url(&app, id, "preview").await;
    let whole = app.client.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let etag = header(&whole, "etag").to_owned();
    assert_eq!(header(&whole, "accept-ranges"), "bytes");
    assert!(header(&whole, "cache-control").starts_with("private, max-age="));
    let bytes = whole.bytes().await.unwrap();
    assert!(bytes.len() > 100);

    let part = app
        .client
        .get(&url)
        .header("range", "bytes=10-49")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        header(&part, "content-range"),
        format!("bytes 10-49/{}", bytes.len())
    );
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(10..50));

    let not_modified = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), 304);
    let head = app.client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), bytes.len().to_string());
    let beyond = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
}

#[tokio::test]
async fn the_signature_binds_the_variant() {
    let app = TestApp::start().await;
    let (id, _) = upload_media(&app, 1, engine_data("exif-orientation/Landscape_1.jpg")).await;
    let thumb = variant_url(&app, id, "thumb").await;
    assert!(thumb.contains("variant=thumb"), "{thumb}");
    for forged in [
        thumb.replace("variant=thumb", "variant=preview"),
        thumb
            .replace("&variant=thumb", "")
            .replace("variant=thumb&", ""),
    ] {
        let resp = app.client.get(&forged).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{forged}");
    }
    assert_eq!(app.client.get(&thumb).send().await.unwrap().status(), 200);
    // Unknown names are refused when signing.
    let (status, v) = post_json(
        &app.client,
        &app.url(&format!("/v1/media/{id}/url")),
        json!({"variant": "huge"}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("unknown_variant"))
    );
    // sign-url signs variants too, offline.
    let (code, out, err) = run_cli(
        &app.data,
        "",
        &["sign-url", &id.to_string(), "--variant", "avatar"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let url = json_of(&out)["url"].as_str().unwrap().to_owned();
    let resp = app.client.get(app.url(&url)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(decode(&resp.bytes().await.unwrap()).dimensions(), (96, 96));
}

#[tokio::test]
async fn a_decompression_bomb_gets_422_remembered_and_the_daemon_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = TestDaemon::start(&data, &dir.path().join("logs"), "");
    let c = &daemon.client;
    let bomb = png_declaring(60_000, 60_000);
    let media = upload_ok(c, &daemon.base, 1, bomb).await;
    let id = media["id"].as_i64().unwrap();
    let (status, body) = post_json(
        c,
        &daemon.url(&format!("/v1/media/{id}/url")),
        json!({"variant": "thumb"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = daemon.url(body["url"].as_str().unwrap());
    for _ in 0..3 {
        let resp = c.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 422);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "too_many_pixels", "{v}");
    }
    // Rendered once: the later answers came from the negative cache.
    let metrics = metrics_text(c, &daemon.url("/metrics")).await;
    let renders: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("media_store_renditions_rendered_total{variant=\"thumb\"} "))
        .unwrap_or_else(|| panic!("no render counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert_eq!(renders, 1.0);
    let (_, peak_kib) = daemon.memory_kib();
    assert!(peak_kib < 200 * 1024, "peak RSS {peak_kib} KiB");
    // The original still downloads; nothing was stored for the failure.
    let (s, _) = get_json(c, &daemon.url(&format!("/v1/media/{id}"))).await;
    assert_eq!(s, 200);
    let rows: i64 = index(&data)
        .query_row("SELECT count(*) FROM renditions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn a_small_image_is_served_as_its_own_thumb() {
    let app = TestApp::start().await;
    let png = testdata("png/gray1.png");
    let (id, media) = upload_media(&app, 1, png.clone()).await;
    for _ in 0..2 {
        let resp = get_variant(&app, id, "thumb").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "content-type"), "image/png");
        assert_eq!(
            header(&resp, "etag"),
            format!("\"{}\"", media["blake3"].as_str().unwrap())
        );
        assert_eq!(resp.bytes().await.unwrap().to_vec(), png);
    }
    // Recorded without a blob: no reference, nothing to collect.
    let (rows, with_blob): (i64, i64) = index(&app.data)
        .query_row(
            "SELECT count(*), count(hash) FROM renditions WHERE variant = 'thumb'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, with_blob), (1, 0));
    assert_eq!(
        refcount(&app.data, media["blake3"].as_str().unwrap()),
        Some(1)
    );
}

#[tokio::test]
async fn media_without_a_picture_answer_clearly() {
    let app = TestApp::start().await;
    let (id, _) = upload_media(&app, 1, testdata("audio/tone.flac")).await;
    let resp = get_variant(&app, id, "thumb").await;
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "variant_not_available");
    // Its duration is probed (ffprobe).
    let v = probed(&app, id, "duration_ms").await;
    assert!(v["duration_ms"].as_u64().unwrap() > 0, "{v}");
    assert!(v.get("width").is_none());
}

#[tokio::test]
async fn lists_filter_by_probed_width() {
    let app = TestApp::start().await;
    let big = upload_ok(
        &app.client,
        &app.base,
        5,
        engine_data("exif-orientation/Landscape_1.jpg"),
    )
    .await;
    let small = upload_ok(&app.client, &app.base, 5, testdata("png/gray1.png")).await;
    probed(&app, big["id"].as_i64().unwrap(), "width").await;
    probed(&app, small["id"].as_i64().unwrap(), "width").await;
    let (status, page) = get_json(
        &app.client,
        &app.url("/v1/media?uploader_id=5&min_width=1000"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<i64> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![big["id"].as_i64().unwrap()]);
    // A duplicate gets the layout at once, from its sibling.
    let dup = upload_ok(
        &app.client,
        &app.base,
        6,
        engine_data("exif-orientation/Landscape_1.jpg"),
    )
    .await;
    assert_eq!(dup["width"], 1800, "{dup}");
    assert!(dup["thumbhash"].is_string());
}

#[tokio::test]
async fn nginx_sends_renditions_through_x_accel_redirect() {
    let app = TestApp::start_with("[serve]\nnginx_accel = true\n").await;
    let nginx = crate::harness::nginx::Nginx::start(
        app.base.trim_start_matches("http://"),
        &app.data.join("blobs"),
    );
    let (id, media) = upload_media(&app, 1, engine_data("exif-orientation/Landscape_1.jpg")).await;
    let path = sign_with(&app.client, &app.base, id, json!({"variant": "thumb"})).await;
    // The daemon renders, then only redirects to the rendition's blob.
    let direct = app.client.get(app.url(&path)).send().await.unwrap();
    assert_eq!(direct.status(), 200);
    let accel = header(&direct, "x-accel-redirect").to_owned();
    assert!(direct.bytes().await.unwrap().is_empty());
    let hex = accel.rsplit('/').next().unwrap().to_owned();
    assert_ne!(hex, media["blake3"].as_str().unwrap());
    let resp = app.client.get(nginx.url(&path)).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", nginx.error_log());
    assert_eq!(header(&resp, "content-type"), "image/webp");
    assert_eq!(header(&resp, "etag"), format!("\"{hex}\""));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hex);
    assert_eq!(decode(&bytes).dimensions(), (320, 213));
}

#[tokio::test]
async fn a_video_gets_a_poster_and_a_slow_tool_answers_503_with_retry_after() {
    let app = TestApp::start().await;
    let (id, _) = upload_media(&app, 1, testdata("video/h264_aac_faststart.mp4")).await;
    let resp = get_variant(&app, id, "thumb").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/webp");
    decode(&resp.bytes().await.unwrap());
    let v = probed(&app, id, "duration_ms").await;
    assert!(
        v["width"].as_u64().is_some() && v["height"].as_u64().is_some(),
        "{v}"
    );
    drop(app);

    // ffmpeg killed at a 1 ms deadline: 503, Retry-After, and remembered.
    let app = TestApp::start_with("[preview]\ntimeout = \"1ms\"\nprobe = false\n").await;
    let (id, _) = upload_media(&app, 1, testdata("video/vp9_opus.webm")).await;
    let url = variant_url(&app, id, "preview").await;
    for _ in 0..2 {
        let resp = app.client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(header(&resp, "retry-after"), "30");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "timed_out");
    }
}

#[tokio::test]
async fn eager_variants_are_rendered_after_upload_and_a_changed_spec_renders_again() {
    let dir = tempfile::tempdir().unwrap();
    let eager = "[preview.variants.thumb]\neager = true\n";
    let app = TestApp::start_in(dir.path(), eager).await;
    let media = upload_ok(
        &app.client,
        &app.base,
        1,
        engine_data("exif-orientation/Landscape_1.jpg"),
    )
    .await;
    let hash = blake3::Hash::from_hex(media["blake3"].as_str().unwrap()).unwrap();
    let rendition = |data: &Path| -> Option<Vec<u8>> {
        index(data)
            .query_row(
                "SELECT hash FROM renditions WHERE source_hash = ?1 AND variant = 'thumb'",
                [hash.as_bytes()],
                |r| r.get(0),
            )
            .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while rendition(&app.data).is_none() {
        assert!(
            Instant::now() < deadline,
            "the eager thumb was never rendered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = rendition(&app.data).unwrap();
    let id = media["id"].as_i64().unwrap();
    app.stop().await;

    // Same data folder, thumb now JPEG at 160: rendered again on request,
    // the old rendition blob released for GC.
    let app = TestApp::start_in(
        dir.path(),
        "[preview.variants.thumb]\nwidth = 160\nheight = 160\nformat = \"jpeg\"\n",
    )
    .await;
    let resp = get_variant(&app, id, "thumb").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "image/jpeg");
    assert!(header(&resp, "content-disposition").contains(".thumb.jpg"));
    assert_eq!(
        decode(&resp.bytes().await.unwrap()).dimensions(),
        (160, 107)
    );
    let second = rendition(&app.data).unwrap();
    assert_ne!(first, second);
    assert_eq!(
        refcount(
            &app.data,
            &blake3::Hash::from_bytes(first.try_into().unwrap()).to_hex()
        ),
        Some(0)
    );
}

#[tokio::test]
async fn strip_exif_removes_identifying_metadata_losslessly_and_dedups_the_stripped_bytes() {
    let app = TestApp::start_with("[upload]\nstrip_exif = true\n").await;
    let original = engine_data("jpeg/metadata_gps_exif_xmp_iptc.jpg");
    let a = upload_ok(&app.client, &app.base, 1, original.clone()).await;
    let b = upload_ok(&app.client, &app.base, 2, original.clone()).await;
    assert_eq!(b["deduplicated"], true, "the same photo is stored once");
    assert_ne!(
        a["blake3"].as_str().unwrap(),
        blake3::hash(&original).to_hex().as_str()
    );
    let id = a["id"].as_i64().unwrap();
    let resp = app
        .client
        .get(signed_url(&app.client, &app.base, id, json!({})).await)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let stored = resp.bytes().await.unwrap().to_vec();
    assert_eq!(stored.len() as u64, a["size"].as_u64().unwrap());
    assert!(stored.len() < original.len());
    for marker in [&b"http://ns.adobe.com/xap"[..], b"Photoshop 3.0"] {
        assert!(!stored.windows(marker.len()).any(|w| w == marker));
    }
    assert!(!stored.windows(4).any(|w| w == b"Exif") || stored.len() < original.len() - 1000);
    // Lossless: the same pixels.
    assert_eq!(decode(&stored), decode(&original));
    // The stripped bytes themselves deduplicate too.
    let c = upload_ok(&app.client, &app.base, 3, stored.clone()).await;
    assert_eq!(c["blake3"], a["blake3"]);
    // Orientation survives: a rotated photo still gets an upright thumb.
    let (id, _) = upload_media(&app, 1, engine_data("exif-orientation/Landscape_6.jpg")).await;
    let resp = get_variant(&app, id, "thumb").await;
    assert_eq!(
        decode(&resp.bytes().await.unwrap()).dimensions(),
        (320, 213)
    );
    let v = probed(&app, id, "width").await;
    assert_eq!(v["width"], 1800);
}
