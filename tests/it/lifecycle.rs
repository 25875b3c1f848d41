//! Message references, group deletion, usage and quotas over real HTTP.

use serde_json::{Value, json};

use crate::harness::*;

async fn put_ref(app: &TestApp, message: i64, media: i64, body: Value) -> (u16, Value) {
    let url = app.url(&format!("/v1/messages/{message}/media/{media}"));
    put_json(&app.client, &url, body).await
}

#[tokio::test]
async fn references_attach_idempotently_and_media_goes_with_its_last_message() {
    let app = TestApp::start().await;
    let a = upload_ok(&app.client, &app.base, 1, unique_png(1)).await;
    let b = upload_ok(&app.client, &app.base, 1, unique_png(2)).await;
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());

    let (s, v) = put_ref(&app, 100, a_id, json!({"group_id": 7})).await;
    assert_eq!((s, &v["created"]), (201, &json!(true)), "{v}");
    let (s, v) = put_ref(&app, 100, a_id, json!({"group_id": 7})).await;
    assert_eq!((s, &v["created"]), (200, &json!(false)), "{v}");
    assert_eq!(
        put_ref(&app, 100, b_id, json!({"group_id": 7})).await.0,
        201
    );
    assert_eq!(
        put_ref(&app, 101, a_id, json!({"group_id": 7})).await.0,
        201
    ); // a forward

    let (s, v) = get_json(&app.client, &app.url("/v1/messages/100/media")).await;
    assert_eq!(s, 200);
    assert_eq!(v["group_id"], 7);
    let ids: Vec<i64> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![a_id, b_id]);
    assert!(
        v["items"][0]["file_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/files/{a_id}"))
    );

    // Errors are JSON 4xx with stable codes.
    let (s, v) = put_ref(&app, 100, a_id, json!({"group_id": 8})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("group_mismatch"))
    );
    let (s, v) = put_ref(&app, 100, 999_999, json!({"group_id": 7})).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (404, Some("media_not_found"))
    );
    let (s, v) = put_ref(&app, 100, a_id, json!({"group": 7})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_body")));
    let (s, v) = put_ref(&app, 100, a_id, json!("nope")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_body")));
    let (s, v) = get_json(&app.client, &app.url("/v1/messages/abc/media")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_path")));

    // Message 100 goes: b had no other reference and goes too; a stays (101).
    let (s, v) = delete_json(&app.client, &app.url("/v1/messages/100")).await;
    assert_eq!(s, 200);
    assert_eq!(
        (v["references"].as_u64(), v["media_deleted"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        get_json(&app.client, &app.url(&format!("/v1/media/{b_id}")))
            .await
            .0,
        404
    );
    assert_eq!(
        get_json(&app.client, &app.url(&format!("/v1/media/{a_id}")))
            .await
            .0,
        200
    );
    assert_eq!(refcount(&app.data, b["blake3"].as_str().unwrap()), Some(0));

    let (s, v) = delete_json(&app.client, &app.url("/v1/messages/101")).await;
    assert_eq!((s, v["media_deleted"].as_u64()), (200, Some(1)));
    assert_eq!(
        get_json(&app.client, &app.url(&format!("/v1/media/{a_id}")))
            .await
            .0,
        404
    );
    assert_eq!(refcount(&app.data, a["blake3"].as_str().unwrap()), Some(0));
    // Deleting again is harmless.
    let (s, v) = delete_json(&app.client, &app.url("/v1/messages/101")).await;
    assert_eq!((s, v["references"].as_u64()), (200, Some(0)));
    let (s, v) = get_json(&app.client, &app.url("/v1/messages/100/media")).await;
    assert_eq!((s, v["items"].as_array().unwrap().len()), (200, 0));
}

#[tokio::test]
async fn deleting_media_directly_removes_its_message_references() {
    let app = TestApp::start().await;
    let a = upload_ok(&app.client, &app.base, 1, unique_png(3)).await;
    let id = a["id"].as_i64().unwrap();
    assert_eq!(put_ref(&app, 5, id, json!({"group_id": 1})).await.0, 201);
    assert_eq!(delete_media(&app.client, &app.base, id).await, 204);
    let (_, v) = get_json(&app.client, &app.url("/v1/messages/5/media")).await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn group_delete_releases_every_message_and_keeps_forwards_elsewhere() {
    let app = TestApp::start().await;
    // 300 messages in group 1; every upload of the same content shares a blob.
    let shared = unique_png(10);
    let mut ids = Vec::new();
    for i in 0..30 {
        let body = if i % 3 == 0 {
            shared.clone()
        } else {
            unique_png(100 + i)
        };
        ids.push(
            upload_ok(&app.client, &app.base, i as i64 % 4, body).await["id"]
                .as_i64()
                .unwrap(),
        );
    }
    for m in 0..300i64 {
        let media = ids[(m % 30) as usize];
        assert_eq!(put_ref(&app, m, media, json!({"group_id": 1})).await.0, 201);
    }
    // One media is forwarded into group 2: it must survive.
    assert_eq!(
        put_ref(&app, 10_000, ids[1], json!({"group_id": 2}))
            .await
            .0,
        201
    );
    let before = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    let (s, v) = delete_json(&app.client, &app.url("/v1/groups/1")).await;
    let after = media_store::clock::Clock::now_ms(&media_store::clock::SystemClock);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["messages"], 300);
    assert_eq!(v["references"], 300);
    assert_eq!(v["media_deleted"], 29);
    let (s, v) = get_json(&app.client, &app.url("/v1/messages/10000/media")).await;
    assert_eq!((s, v["items"][0]["id"].as_i64()), (200, Some(ids[1])));
    let hex = blake3::hash(&shared).to_hex().to_string();
    assert_eq!(refcount(&app.data, &hex), Some(0));
    let zero_since: Option<i64> = index(&app.data)
        .query_row(
            "SELECT zero_since FROM blobs WHERE hash = ?1",
            [blake3::hash(&shared).as_bytes()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        zero_since.is_some_and(|t| (before..=after).contains(&t)),
        "a count reaching 0 is stamped, when it does: {zero_since:?} not in {before}..={after}"
    );
    let (s, v) = delete_json(&app.client, &app.url("/v1/groups/1")).await;
    assert_eq!((s, v["messages"].as_u64()), (200, Some(0)));
}

#[tokio::test]
async fn usage_reports_referenced_and_deduplicated_bytes() {
    let app = TestApp::start().await;
    let png = unique_png(20);
    let other = unique_png(21);
    for body in [png.clone(), png.clone(), other.clone()] {
        upload_ok(&app.client, &app.base, 42, body).await;
    }
    upload_ok(&app.client, &app.base, 43, png.clone()).await;
    let (s, v) = get_json(&app.client, &app.url("/v1/uploaders/42/usage")).await;
    assert_eq!(s, 200);
    assert_eq!(v["uploader_id"], 42);
    assert_eq!(v["file_count"], 3);
    assert_eq!(v["bytes_referenced"], (2 * png.len() + other.len()) as u64);
    assert_eq!(v["bytes_stored"], (png.len() + other.len()) as u64);
    assert_eq!(v["quota_bytes"], Value::Null);
    let (s, v) = get_json(&app.client, &app.url("/v1/uploaders/7/usage")).await;
    assert_eq!((s, v["file_count"].as_u64()), (200, Some(0)));
    let resp = app
        .client
        .get(app.url("/v1/uploaders/42/usage"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn new_routes_require_the_service_token() {
    let app = TestApp::start().await;
    let c = &app.client;
    for req in [
        c.put(app.url("/v1/messages/1/media/1"))
            .json(&json!({"group_id": 1})),
        c.get(app.url("/v1/messages/1/media")),
        c.delete(app.url("/v1/messages/1")),
        c.delete(app.url("/v1/groups/1")),
        c.get(app.url("/v1/uploaders/1/usage")),
    ] {
        let resp = req
            .header("authorization", "Bearer wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
}

#[tokio::test]
async fn file_quota_refuses_with_507_and_concurrent_uploads_do_not_overshoot() {
    let app = TestApp::start_with("[retention]\nquota_files = 5\n").await;
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let (client, base) = (app.client.clone(), app.base.clone());
        tasks.push(tokio::spawn(async move {
            upload_raw(&client, &base, 9, unique_png(1000 + i)).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap();
        match status {
            201 => created += 1,
            507 => assert_eq!(v["error"]["code"], "quota_exceeded", "{v}"),
            s => panic!("unexpected {s}: {v}"),
        }
    }
    assert_eq!(created, 5);
    let (_, v) = get_json(&app.client, &app.url("/v1/uploaders/9/usage")).await;
    assert_eq!(
        (v["file_count"].as_u64(), v["quota_files"].as_u64()),
        (Some(5), Some(5))
    );
    // Another uploader is not affected, and no refused upload left a file behind.
    upload_ok(&app.client, &app.base, 10, unique_png(1)).await;
    assert_eq!(blob_files(&app.data).len(), 6);
    assert_eq!(tmp_files(&app.data), 0);
}

#[tokio::test]
async fn byte_quota_counts_every_upload_and_frees_on_delete() {
    let png = unique_png(5);
    let quota = 2 * png.len() + 10;
    let app = TestApp::start_with(&format!("[retention]\nquota_bytes = {quota}\n")).await;
    let first = upload_ok(&app.client, &app.base, 3, png.clone()).await;
    upload_ok(&app.client, &app.base, 3, png.clone()).await; // a duplicate still counts for its uploader
    let (s, v) = upload_raw(&app.client, &app.base, 3, png.clone()).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (507, Some("quota_exceeded"))
    );
    assert_eq!(
        delete_media(&app.client, &app.base, first["id"].as_i64().unwrap()).await,
        204
    );
    upload_ok(&app.client, &app.base, 3, png).await;
}
