//! `media-store fsck` / `scrub`: detection, repair by quarantine and marks,
//! and healing by a later upload.

use std::path::Path;

use crate::harness::*;

fn corrupt_marks(data: &Path) -> i64 {
    index(data)
        .query_row(
            "SELECT count(*) FROM media WHERE corrupt_since IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test]
async fn fsck_finds_corruption_loss_and_bad_counts_and_repair_quarantines_without_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let app = TestApp::start_in(&data, "").await;
    let (good, bad, lost, miscounted) =
        (unique_png(1), unique_png(2), unique_png(3), unique_png(4));
    for body in [&good, &bad, &bad, &lost, &miscounted] {
        upload_ok(&app.client, &app.base, 1, body.clone()).await;
    }
    app.stop().await;

    // Clean: exit 0, both as fsck and as scrub.
    let (code, out, err) = run_cli(&data, "", &["fsck", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(json_of(&out)["blobs_checked"], 4);
    assert_eq!(run_cli(&data, "", &["scrub"]).0, 0);

    // Damage: flip a byte (same size), remove a file, skew a count, add an orphan.
    let mut bytes = std::fs::read(blob_path(&data, &bad)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(blob_path(&data, &bad), &bytes).unwrap();
    std::fs::remove_file(blob_path(&data, &lost)).unwrap();
    {
        let c = rusqlite::Connection::open(data.join("index.sqlite3")).unwrap();
        c.execute(
            "UPDATE blobs SET refcount = 5 WHERE hash = ?1",
            [blake3::hash(&miscounted).as_bytes()],
        )
        .unwrap();
    }
    let orphan = b"orphan".to_vec();
    std::fs::create_dir_all(blob_path(&data, &orphan).parent().unwrap()).unwrap();
    std::fs::write(blob_path(&data, &orphan), &orphan).unwrap();

    let hex = |c: &[u8]| blake3::hash(c).to_hex().to_string();
    let (code, out, _) = run_cli(&data, "", &["fsck", "--json"]);
    assert_eq!(code, 1, "{out}");
    let v = json_of(&out);
    assert_eq!(v["corrupt"], serde_json::json!([hex(&bad)]));
    assert_eq!(v["missing"], serde_json::json!([hex(&lost)]));
    assert_eq!(v["count_mismatches"][0]["hash"], hex(&miscounted));
    assert_eq!(v["count_mismatches"][0]["recorded"], 5);
    assert_eq!(v["count_mismatches"][0]["actual"], 1);
    assert!(
        v["orphan_files"][0]
            .as_str()
            .unwrap()
            .ends_with(&hex(&orphan))
    );
    // Checking changes nothing.
    assert!(blob_path(&data, &bad).exists());
    assert_eq!(refcount(&data, &hex(&miscounted)), Some(5));

    let (code, out, _) = run_cli(&data, "", &["fsck", "--repair"]);
    assert_eq!(code, 1, "problems were found, even if repaired: {out}");
    assert!(
        out.contains("repaired: 1 counts fixed, 1 blobs quarantined, 3 media marked corrupt"),
        "{out}"
    );
    assert!(!blob_path(&data, &bad).exists());
    let quarantined: Vec<_> = std::fs::read_dir(data.join("quarantine"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        std::fs::read(quarantined[0].path()).unwrap(),
        bytes,
        "kept byte for byte"
    );
    assert_eq!(refcount(&data, &hex(&miscounted)), Some(1));
    assert_eq!(corrupt_marks(&data), 3); // two uploads of `bad`, one of `lost`
    assert!(
        blob_path(&data, &orphan).exists(),
        "fsck never deletes; gc does"
    );

    // Known losses are no longer new problems.
    let (code, out, _) = run_cli(&data, "", &["fsck", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_of(&out)["known_lost"].as_array().unwrap().len(), 2);

    // A new upload of the lost content re-installs the blob and clears its
    // media's marks at once (issue #10: an upload heals); repair finds
    // nothing left to unmark.
    let mut app = TestApp::start_in(&data, "").await;
    app.accept_damage("`lost` stays lost: a known loss, marked corrupt");
    let (s, v) = upload_raw(&app.client, &app.base, 2, bad.clone()).await;
    assert_eq!((s, v["deduplicated"].as_bool()), (201, Some(false)), "{v}");
    assert_eq!(corrupt_marks(&data), 1, "only `lost` stays marked");
    let (code, out, _) = run_cli(&data, "", &["fsck", "--repair", "--json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_of(&out)["media_unmarked"], 0);
    assert_eq!(corrupt_marks(&data), 1);
    app.stop().await;
}

#[test]
fn fsck_refuses_a_folder_without_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_cli(dir.path(), "", &["fsck"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has no index"), "{err}");
}
