//! Shared by the HTTP fuzz targets: one in-process daemon (real index and
//! blob store in a temporary folder, the real router), driven request by
//! request without a socket, and the checks every answer must pass.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, Response};
use http_body_util::BodyExt as _;
use media_store::config::{Config, Overrides};
use tower::ServiceExt as _;

pub const TOKEN: &str = "fuzz-token-0123456789abcdef";

pub struct App {
    pub runtime: tokio::runtime::Runtime,
    pub router: axum::Router,
    pub state: media_store::AppState,
    _dir: tempfile::TempDir,
}

/// The daemon, opened once per fuzzing process.
pub fn app() -> &'static App {
    static APP: OnceLock<App> = OnceLock::new();
    APP.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary folder");
        let env = BTreeMap::from([
            ("MEDIA_STORE_API_TOKEN".to_string(), TOKEN.to_string()),
            ("MEDIA_STORE_LOG".to_string(), "off".to_string()),
        ]);
        let overrides = Overrides {
            data_dir: Some(dir.path().join("data")),
            listen: None,
        };
        let config = Config::from_parts("", &env, &overrides).expect("config");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let state = runtime.block_on(async {
            media_store::AppState::open(config).expect("app opens").0
        });
        let router = media_store::http::router(state.http().clone());
        App {
            runtime,
            router,
            state,
            _dir: dir,
        }
    })
}

impl App {
    /// Sends one request through the router; returns the answer with its body.
    pub fn send(&self, request: Request<Body>) -> (Response<()>, bytes::Bytes) {
        self.runtime.block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router is infallible");
            let (parts, body) = response.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (Response::from_parts(parts, ()), bytes)
        })
    }
}

/// What every answer must be: no 5xx, and an error is the JSON envelope with a
/// code and a message.
pub fn check_answer(response: &Response<()>, body: &[u8]) {
    let status = response.status();
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(body)
    );
    if status.is_client_error() && !body.is_empty() {
        let v: serde_json::Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {:?}", String::from_utf8_lossy(body)));
        assert!(v["error"]["code"].is_string(), "{status}: {v}");
        assert!(
            v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{status}: {v}"
        );
    }
}
