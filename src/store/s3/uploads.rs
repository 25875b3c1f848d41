//! Incomplete multipart uploads under the store's prefix: listed
//! (`ListMultipartUploads`) and aborted (`AbortMultipartUpload`) by GC
//! (storage-layout.md, "S3", invariant S8).
//!
//! A daemon killed while it sends a large blob as a multipart upload leaves
//! the upload open in the bucket: its parts hold space, invisible to
//! `ListObjectsV2`, until someone aborts it.
//!
//! object_store 0.14 aborts an upload it knows the id of
//! ([`MultipartStore::abort_multipart`]) but has no call that lists them.
//! It does export what it signs and sends every other request with: its
//! SigV4 signer ([`AwsAuthorizer`]) and its HTTP client
//! ([`ReqwestConnector`], built from the same [`ClientOptions`], so the
//! same timeouts). So the listing is one `GET /<bucket>?uploads&prefix=`
//! signed and sent here with those, and its small XML answer read with
//! `quick-xml` (already object_store's own parser). A second signing crate
//! (`rusty-s3`, sans-IO) would have brought a second SigV4 implementation,
//! and still needed this same client, for one request.
//!
//! Garage 2.5 implements `ListMultipartUploads` (prefix, markers, paging)
//! and `AbortMultipartUpload`; both are exercised against the real cluster by
//! `s3::gc_aborts_multipart_uploads_a_killed_daemon_left`.

use std::time::Instant;

use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::multipart::MultipartStore;
use object_store::path::Path as ObjectPath;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{S3Blobs, S3Config, observe, unavailable};
use crate::store::{Result, StoreError};

/// A multipart upload begun and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IncompleteUpload {
    /// The object key it would create (under the store's prefix).
    pub key: String,
    pub upload_id: String,
    /// When it was begun, by the bucket's clock (Unix ms).
    pub initiated_ms: i64,
}

/// What the listing request needs besides the object_store client.
#[derive(Debug)]
pub(super) struct UploadLister {
    http: HttpClient,
    /// `http://host:port/bucket` (path style) or `http://bucket.host:port`.
    bucket_url: String,
    region: String,
}

impl UploadLister {
    pub(super) fn new(config: &S3Config, options: &ClientOptions) -> Result<UploadLister> {
        let http = ReqwestConnector::default()
            .connect(options)
            .map_err(|e| StoreError::Config(format!("store.s3: {e}")))?;
        let endpoint = config.endpoint.trim_end_matches('/');
        let bucket_url = if config.path_style {
            format!("{endpoint}/{}", config.bucket)
        } else {
            // `scheme://host` becomes `scheme://bucket.host`.
            match endpoint.split_once("://") {
                Some((scheme, host)) => format!("{scheme}://{}.{host}", config.bucket),
                None => format!("{}.{endpoint}", config.bucket),
            }
        };
        Ok(UploadLister {
            http,
            bucket_url,
            region: config.region.clone(),
        })
    }
}

/// RFC 3986 unreserved characters stay; everything else is %-encoded (what
/// SigV4's canonical query expects, so the signed and sent query agree).
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn query_value(v: &str) -> String {
    utf8_percent_encode(v, QUERY).to_string()
}

/// `ListMultipartUploadsResult`, the parts read.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ListResult {
    #[serde(rename = "IsTruncated")]
    is_truncated: bool,
    #[serde(rename = "NextKeyMarker")]
    next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker")]
    next_upload_id_marker: Option<String>,
    #[serde(rename = "Upload")]
    uploads: Vec<ListedUpload>,
}

#[derive(Debug, serde::Deserialize)]
struct ListedUpload {
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "UploadId")]
    upload_id: String,
    #[serde(rename = "Initiated")]
    initiated: String,
}

fn parse_page(xml: &[u8]) -> std::result::Result<ListResult, String> {
    let text = std::str::from_utf8(xml).map_err(|e| e.to_string())?;
    quick_xml::de::from_str(text).map_err(|e| format!("{e}: {text:.300}"))
}

fn parse_time_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

impl S3Blobs {
    /// Every incomplete multipart upload whose key is under the store's
    /// prefix, in key order (a page of up to 1000 per request).
    pub(in crate::store) fn incomplete_uploads(&self) -> Result<Vec<IncompleteUpload>> {
        let started = Instant::now();
        let out = self.block_on(self.list_uploads());
        let counted: object_store::Result<()> =
            out.as_ref()
                .map(|_| ())
                .map_err(|e| object_store::Error::Generic {
                    store: "S3",
                    source: e.clone().into(),
                });
        observe("list_uploads", started, &counted);
        out.map_err(|e| {
            StoreError::Unavailable(format!(
                "could not list the multipart uploads in the S3 bucket: {e}"
            ))
        })
    }

    async fn list_uploads(&self) -> std::result::Result<Vec<IncompleteUpload>, String> {
        let lister = &self.uploads;
        let mut found = Vec::new();
        let mut markers: Option<(String, String)> = None;
        // Bounded: a bucket answering `IsTruncated` forever is not followed.
        for _page in 0..100_000 {
            let mut url = format!(
                "{}?uploads&max-uploads=1000&prefix={}",
                lister.bucket_url,
                query_value(&self.prefix)
            );
            if let Some((key, id)) = &markers {
                url.push_str(&format!(
                    "&key-marker={}&upload-id-marker={}",
                    query_value(key),
                    query_value(id)
                ));
            }
            let credential = self
                .client
                .credentials()
                .get_credential()
                .await
                .map_err(|e| e.to_string())?;
            let mut request: HttpRequest = http::Request::builder()
                .method(http::Method::GET)
                .uri(&url)
                .body(HttpRequestBody::empty())
                .map_err(|e| e.to_string())?;
            AwsAuthorizer::new(&credential, "s3", &lister.region)
                .try_authorize(&mut request, None)
                .map_err(|e| e.to_string())?;
            let response = lister
                .http
                .execute(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = response
                .into_body()
                .bytes()
                .await
                .map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!(
                    "ListMultipartUploads answered {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                ));
            }
            let page = parse_page(&body)?;
            for u in page.uploads {
                let initiated_ms = parse_time_ms(&u.initiated)
                    .ok_or_else(|| format!("bad Initiated time {:?}", u.initiated))?;
                found.push(IncompleteUpload {
                    key: u.key,
                    upload_id: u.upload_id,
                    initiated_ms,
                });
            }
            match (
                page.is_truncated,
                page.next_key_marker,
                page.next_upload_id_marker,
            ) {
                (true, Some(key), Some(id))
                    if markers.as_ref() != Some(&(key.clone(), id.clone())) =>
                {
                    markers = Some((key, id));
                }
                _ => return Ok(found),
            }
        }
        Ok(found)
    }

    /// Aborts one incomplete upload: the bucket drops its parts. An upload
    /// already gone (completed or aborted meanwhile) is not an error.
    pub(in crate::store) fn abort_upload(&self, upload: &IncompleteUpload) -> Result<()> {
        if !upload.key.starts_with(&self.prefix) {
            return Err(StoreError::Config(format!(
                "refusing to abort an upload outside the store's prefix: {}",
                upload.key
            )));
        }
        let path = ObjectPath::from(upload.key.as_str());
        let id = upload.upload_id.clone();
        let client: &AmazonS3 = &self.client;
        match self.run("abort_multipart", client.abort_multipart(&path, &id)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(unavailable("abort a multipart upload", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_page_is_read() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><KeyMarker></KeyMarker><NextKeyMarker>media/blobs/ab/cd/x</NextKeyMarker><NextUploadIdMarker>02</NextUploadIdMarker><Prefix>media/</Prefix><MaxUploads>1000</MaxUploads><IsTruncated>true</IsTruncated><Upload><Initiated>2026-11-30T06:30:24.123Z</Initiated><Initiator><DisplayName>k</DisplayName><ID>k</ID></Initiator><Key>media/blobs/ab/cd/x&amp;y</Key><UploadId>01</UploadId><Owner><DisplayName>k</DisplayName><ID>k</ID></Owner><StorageClass>STANDARD</StorageClass></Upload><Upload><Initiated>2026-11-30T06:30:25Z</Initiated><Key>media/blobs/ab/cd/x</Key><UploadId>02</UploadId></Upload></ListMultipartUploadsResult>"#;
        let page = parse_page(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_upload_id_marker.as_deref(), Some("02"));
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[0].key, "media/blobs/ab/cd/x&y");
        assert_eq!(
            parse_time_ms(&page.uploads[0].initiated),
            Some(1_796_020_224_123)
        );
        let empty = parse_page(
            br#"<ListMultipartUploadsResult><Bucket>b</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#,
        )
        .unwrap();
        assert!(empty.uploads.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn query_values_are_strictly_encoded() {
        assert_eq!(query_value("media/a b+c~"), "media%2Fa%20b%2Bc~");
    }
}
