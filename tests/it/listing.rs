//! Metadata listing: filters, time windows and keyset pagination.

use serde_json::Value;

use crate::harness::*;

#[tokio::test]
async fn listing_filters_by_uploader_and_type_and_pages_newest_first() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..12u64 {
        let (body, uploader) = match i % 3 {
            0 => (unique_png(i), 1),
            1 => (fake_mp4(4096, i), 1),
            _ => (unique_png(i), 2),
        };
        let (status, b) = upload_raw(&app.client, &app.base, uploader, body).await;
        assert_eq!(status, 201);
        ids.push(b["id"].as_i64().unwrap());
    }
    let list = |q: String| {
        let app = &app;
        async move {
            get_json(&app.client, &app.url(&format!("/v1/media{q}")))
                .await
                .1
        }
    };
    let all = list("?limit=100".into()).await;
    let got: Vec<i64> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_i64().unwrap())
        .collect();
    let mut want = ids.clone();
    want.reverse();
    assert_eq!(got, want);
    assert_eq!(all["next_cursor"], Value::Null);

    let u1_images = list("?uploader_id=1&type=image/*".into()).await;
    let items = u1_images["items"].as_array().unwrap();
    assert_eq!(items.len(), 4);
    assert!(
        items
            .iter()
            .all(|v| v["uploader_id"] == 1 && v["file_type"] == "image/png")
    );
    let videos = list("?type=video/mp4".into()).await;
    assert_eq!(videos["items"].as_array().unwrap().len(), 4);
    let none = list("?type=audio/*".into()).await;
    assert!(none["items"].as_array().unwrap().is_empty());

    // Walk pages of 5 and get every row exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let q = match &cursor {
            Some(c) => format!("?limit=5&cursor={c}"),
            None => "?limit=5".into(),
        };
        let page = list(q).await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, want);
}

#[tokio::test]
async fn listing_filters_by_time_window() {
    let app = TestApp::start().await;
    let (_, first) = upload_raw(&app.client, &app.base, 1, unique_png(1)).await;
    // The second upload needs a later millisecond than the first.
    let t1 =
        media_store::timefmt::parse_instant_ms(first["uploaded_at"].as_str().unwrap()).unwrap();
    wait_until(
        std::time::Duration::from_secs(5),
        "the clock to pass the first upload",
        || media_store::clock::Clock::now_ms(&media_store::clock::SystemClock) > t1,
    )
    .await;
    let (_, second) = upload_raw(&app.client, &app.base, 1, unique_png(2)).await;
    let t2 = second["uploaded_at"].as_str().unwrap();
    let since = get_json(&app.client, &app.url(&format!("/v1/media?since={t2}")))
        .await
        .1;
    let ids: Vec<_> = since["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, vec![second["id"].clone()]);
    let until = get_json(&app.client, &app.url(&format!("/v1/media?until={t2}")))
        .await
        .1;
    let ids: Vec<_> = until["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, vec![first["id"].clone()]);
    let old = get_json(&app.client, &app.url("/v1/media?until=1000000000"))
        .await
        .1;
    assert!(old["items"].as_array().unwrap().is_empty());
}
