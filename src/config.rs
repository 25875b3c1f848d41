//! Configuration: built-in defaults, then the TOML file, then `MEDIA_STORE_*`
//! environment variables, then command-line flags.
//!
//! Every key has an environment variable derived from its TOML path:
//! `upload.max_bytes` is `MEDIA_STORE_UPLOAD_MAX_BYTES`. The value is parsed as
//! a TOML value of the key's type (strings may be given bare). This module is the
//! only reader of the process environment; it takes the environment as a map so
//! that tests can layer configs without touching `std::env`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

// Each module owns its section; this module only layers and validates them.
pub use crate::http::config::{CorsConfig, LimitsConfig, MetricsConfig, ServeConfig};
pub use crate::index::IndexConfig;
pub use crate::lifecycle::{ArchiveConfig, GcConfig, RetentionConfig};
pub use crate::mirror::MysqlConfig;
pub use crate::policy::UploadConfig;
pub use crate::preview::PreviewConfig;
pub use crate::signing::SigningConfig;
pub use crate::store::{Backend, StoreConfig};

pub const ENV_PREFIX: &str = "MEDIA_STORE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder holding blobs, staging files and the SQLite index.
    pub data_dir: PathBuf,
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Service bearer token; when empty, `<data_dir>/api-token` is used (generated on first start).
    pub api_token: String,
    /// Prefix of `file_url` (e.g. `https://media.example.org`); empty gives a host-relative path.
    pub public_base_url: String,
    /// Log filter in `tracing` EnvFilter syntax.
    pub log: String,
    /// How log lines are written: `auto` (JSON under systemd's journal, else
    /// text, coloured only on a terminal), `text` or `json`.
    pub log_format: crate::telemetry::LogFormat,
    pub upload: UploadConfig,
    pub index: IndexConfig,
    /// The MySQL mirror of the index (`media_files`) and the GC safety belt.
    pub mysql: MysqlConfig,
    /// What is deleted when, and per-uploader quotas (issue #4).
    pub retention: RetentionConfig,
    /// Garbage collection of unreferenced blobs and stale files (issue #4).
    pub gc: GcConfig,
    /// Moving old blobs to a second data root (issue #4).
    pub archive: ArchiveConfig,
    /// Where blobs live: the data folder, or an S3 bucket (issue #13).
    pub store: StoreConfig,
    pub signing: SigningConfig,
    pub serve: ServeConfig,
    pub cors: CorsConfig,
    /// Renditions (thumbnails, previews) and upload metadata (issue #11).
    pub preview: PreviewConfig,
    /// Connection, upload and timeout limits (issue #12).
    pub limits: LimitsConfig,
    /// Who may read `GET /metrics`.
    pub metrics: MetricsConfig,
}

/// Shortest `api_token` accepted: a guessable service token opens the whole API.
pub const MIN_API_TOKEN_CHARS: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./media-data"),
            listen: "127.0.0.1:8080".parse().expect("literal address"),
            api_token: String::new(),
            public_base_url: String::new(),
            log: "info".into(),
            log_format: Default::default(),
            upload: UploadConfig::default(),
            index: IndexConfig::default(),
            mysql: MysqlConfig::default(),
            retention: Default::default(),
            gc: Default::default(),
            archive: Default::default(),
            store: Default::default(),
            signing: SigningConfig::default(),
            serve: ServeConfig::default(),
            cors: CorsConfig::default(),
            preview: PreviewConfig::default(),
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// Flags given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Resolves the layered configuration.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_parts(&text, env, overrides)
    }

    /// Like [`Config::load`] with the file's text already read.
    pub fn from_parts(
        file_text: &str,
        env: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let from_file: toml::Table =
            toml::from_str(file_text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let defaults = toml::Table::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let mut merged = defaults.clone();
        merge(&mut merged, from_file);
        apply_env(&mut merged, &defaults, env, "")?;
        let mut config: Config = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_connections == 0
            || limits.max_concurrent_uploads == 0
            || limits.header_read_timeout.is_zero()
            || limits.body_read_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "limits.max_connections, limits.max_concurrent_uploads, limits.header_read_timeout \
                 and limits.body_read_timeout must be positive"
                    .into(),
            ));
        }
        self.retention.validate().map_err(ConfigError::Invalid)?;
        let token_len = self.api_token.chars().count();
        if token_len > 0 && token_len < MIN_API_TOKEN_CHARS {
            return Err(ConfigError::Invalid(format!(
                "api_token has {token_len} characters; at least {MIN_API_TOKEN_CHARS} are required \
                 (e.g. `head -c32 /dev/urandom | basenc --base64url`), or leave it empty to use \
                 the token generated into <data_dir>/api-token"
            )));
        }
        if self.upload.max_bytes == 0 {
            return Err(ConfigError::Invalid(
                "upload.max_bytes must be positive".into(),
            ));
        }
        if self.index.group_commit_max == 0 || self.index.reader_connections == 0 {
            return Err(ConfigError::Invalid(
                "index.group_commit_max and index.reader_connections must be positive".into(),
            ));
        }
        self.mysql.validate().map_err(ConfigError::Invalid)?;
        for t in self
            .upload
            .allowed_types
            .iter()
            .chain(&self.upload.denied_types)
        {
            if !t.contains('/') {
                return Err(ConfigError::Invalid(format!(
                    "type pattern {t:?} is neither type/subtype nor family/*"
                )));
            }
        }
        crate::signing::validate_config(&self.signing).map_err(ConfigError::Invalid)?;
        self.preview.validate().map_err(ConfigError::Invalid)?;
        if !(self.serve.accel_prefix.starts_with('/') && self.serve.accel_prefix.ends_with('/')) {
            return Err(ConfigError::Invalid(
                "serve.accel_prefix must start and end with `/`".into(),
            ));
        }
        self.archive
            .validate(&self.data_dir)
            .map_err(ConfigError::Invalid)?;
        self.store.validate().map_err(ConfigError::Invalid)?;
        if self.store.backend == Backend::S3
            && (self.archive.root().is_some() || self.archive.in_bucket())
        {
            return Err(ConfigError::Invalid(
                "archive.root and archive.backend = \"s3\" cannot be combined with \
                 store.backend = \"s3\" (the bucket holds every blob already)"
                    .into(),
            ));
        }
        if self.archive.in_bucket() {
            self.store.s3.validate().map_err(ConfigError::Invalid)?;
        }
        if self.serve.unix_socket_mode > 0o777 {
            return Err(ConfigError::Invalid(format!(
                "serve.unix_socket_mode {:#o} is not a permission mode (at most 0o777)",
                self.serve.unix_socket_mode
            )));
        }
        Ok(())
    }

    /// For a reload: `self` with the restart-only keys ([`RESTART_KEYS`]) taken from `running`.
    /// Returns the restart-only keys whose new value was not applied.
    pub fn with_restart_keys_from(mut self, running: &Config) -> (Config, Vec<&'static str>) {
        let mut ignored = Vec::new();
        if self.data_dir != running.data_dir {
            ignored.push("data_dir");
            self.data_dir = running.data_dir.clone();
        }
        if self.listen != running.listen {
            ignored.push("listen");
            self.listen = running.listen;
        }
        if self.log != running.log {
            ignored.push("log");
            self.log = running.log.clone();
        }
        if self.log_format != running.log_format {
            ignored.push("log_format");
            self.log_format = running.log_format;
        }
        if self.index != running.index {
            ignored.push("index");
            self.index = running.index.clone();
        }
        // The blob store (which roots it reads) is built once at start.
        if self.archive.root != running.archive.root {
            ignored.push("archive.root");
            self.archive.root = running.archive.root.clone();
        }
        if self.archive.backend != running.archive.backend {
            ignored.push("archive.backend");
            self.archive.backend = running.archive.backend;
        }
        if self.store != running.store {
            ignored.push("store");
            self.store = running.store.clone();
        }
        // The sync worker is built once at start from these.
        if self.mysql != running.mysql {
            ignored.push("mysql");
            self.mysql = running.mysql.clone();
        }
        // Bound once at start, like `listen`.
        if self.serve.unix_socket != running.serve.unix_socket {
            ignored.push("serve.unix_socket");
            self.serve.unix_socket = running.serve.unix_socket.clone();
        }
        if self.serve.unix_socket_mode != running.serve.unix_socket_mode {
            ignored.push("serve.unix_socket_mode");
            self.serve.unix_socket_mode = running.serve.unix_socket_mode;
        }
        if self.serve.unix_socket_group != running.serve.unix_socket_group {
            ignored.push("serve.unix_socket_group");
            self.serve.unix_socket_group = running.serve.unix_socket_group.clone();
        }
        // The worker pool is sized once at start.
        if self.preview.workers != running.preview.workers {
            ignored.push("preview.workers");
            self.preview.workers = running.preview.workers;
        }
        (self, ignored)
    }

    /// Every key as (TOML path, environment variable), for docs and tests.
    pub fn keys() -> Vec<(String, String)> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let mut out = Vec::new();
        collect_keys(&defaults, "", &mut out);
        out
    }

    /// Every key with its environment variable, its default (TOML) and when a
    /// change applies (`live`, or `restart`): what `config-keys` prints.
    pub fn keys_described() -> Vec<(String, String, String, &'static str)> {
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        Config::keys()
            .into_iter()
            .map(|(path, env)| {
                let mut value: Option<&toml::Value> = None;
                let mut table = Some(&defaults);
                for part in path.split('.') {
                    value = table.and_then(|t| t.get(part));
                    table = value.and_then(|v| v.as_table());
                }
                let default = value.map(|v| v.to_string()).unwrap_or_default();
                let reload = if RESTART_KEYS
                    .iter()
                    .any(|k| path == *k || path.starts_with(&format!("{k}.")))
                {
                    "restart"
                } else {
                    "live"
                };
                (path, env, default, reload)
            })
            .collect()
    }

    /// The process environment's `MEDIA_STORE_*` variables.
    pub fn process_env() -> BTreeMap<String, String> {
        std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect()
    }
}

/// Keys (or sections) a reload does not apply: [`Config::with_restart_keys_from`]
/// keeps their running values.
pub const RESTART_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "log",
    "log_format",
    "index",
    "archive.root",
    "archive.backend",
    "store",
    "mysql",
    "serve.unix_socket",
    "serve.unix_socket_mode",
    "serve.unix_socket_group",
    "preview.workers",
];

fn env_name(path: &str) -> String {
    format!("{ENV_PREFIX}{}", path.replace('.', "_").to_uppercase())
}

fn collect_keys(table: &toml::Table, prefix: &str, out: &mut Vec<(String, String)>) {
    for (key, value) in table {
        let path = format!("{prefix}{key}");
        match value {
            // Maps with free-form keys (family_max_bytes) are set as one TOML inline table.
            toml::Value::Table(t) if !is_free_form(&path) => {
                collect_keys(t, &format!("{path}."), out)
            }
            _ => out.push((path.clone(), env_name(&path))),
        }
    }
}

fn is_free_form(path: &str) -> bool {
    path == "upload.family_max_bytes"
        || path == "retention.max_age_days"
        || path == "signing.keys"
        || path == "preview.variants"
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn apply_env(
    merged: &mut toml::Table,
    defaults: &toml::Table,
    env: &BTreeMap<String, String>,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (key, default) in defaults {
        let path = format!("{prefix}{key}");
        if let toml::Value::Table(sub) = default
            && !is_free_form(&path)
        {
            if let Some(toml::Value::Table(target)) = merged.get_mut(key) {
                apply_env(target, sub, env, &format!("{path}."))?;
            }
            continue;
        }
        let name = env_name(&path);
        let Some(raw) = env.get(&name) else { continue };
        let value = parse_env_value(raw, default).ok_or_else(|| {
            ConfigError::Invalid(format!("{name}={raw:?} is not a valid value for {path}"))
        })?;
        merged.insert(key.clone(), value);
    }
    Ok(())
}

/// Parses an environment value as the same TOML type as the key's default.
fn parse_env_value(raw: &str, default: &toml::Value) -> Option<toml::Value> {
    match default {
        toml::Value::String(_) => Some(toml::Value::String(raw.to_owned())),
        _ => {
            let parsed: toml::Table = toml::from_str(&format!("v = {raw}")).ok()?;
            let v = parsed.get("v")?.clone();
            (std::mem::discriminant(&v) == std::mem::discriminant(default)).then_some(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn archive_root_must_be_apart_from_the_data_folder() {
        let mut c = Config {
            data_dir: "/srv/media".into(),
            ..Config::default()
        };
        c.validate().unwrap();
        for bad in ["/srv/media", "/srv/media/blobs/archive"] {
            c.archive.root = bad.into();
            assert!(c.validate().is_err(), "{bad} accepted");
        }
        c.archive.root = "/mnt/cold/media".into();
        c.validate().unwrap();
    }

    #[test]
    fn an_archive_bucket_needs_a_local_primary_no_root_and_a_bucket() {
        let toml = |archive: &str, store_backend: &str, endpoint: &str| {
            format!(
                "[archive]\n{archive}\n[store]\nbackend = \"{store_backend}\"\n\
                 [store.s3]\nendpoint = \"{endpoint}\"\nbucket = \"media\"\n"
            )
        };
        let load = |text: String| Config::from_parts(&text, &env(&[]), &Overrides::default());
        let ok = load(toml("backend = \"s3\"", "local", "http://127.0.0.1:3900")).unwrap();
        assert!(ok.archive.in_bucket());
        for bad in [
            toml(
                "backend = \"s3\"\nroot = \"/mnt/cold\"",
                "local",
                "http://127.0.0.1:3900",
            ),
            toml("backend = \"s3\"", "s3", "http://127.0.0.1:3900"),
            toml("backend = \"s3\"", "local", ""),
            toml("backend = \"s3\"", "local", "ftp://127.0.0.1"),
        ] {
            assert!(load(bad.clone()).is_err(), "accepted:\n{bad}");
        }
        // The bucket settings are checked only when a bucket is used.
        load(toml("", "local", "")).unwrap();
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_parts("", &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let file = "listen = \"127.0.0.1:9000\"\n[upload]\nmax_bytes = 100\n[upload.family_max_bytes]\nimage = 10\n";
        let e = env(&[
            ("MEDIA_STORE_UPLOAD_MAX_BYTES", "200"),
            ("MEDIA_STORE_API_TOKEN", "secret-0123456789"),
            ("MEDIA_STORE_UPLOAD_DENIED_TYPES", "[\"video/*\"]"),
        ]);
        let flags = Overrides {
            data_dir: Some("/srv/m".into()),
            listen: None,
        };
        let c = Config::from_parts(file, &e, &flags).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.upload.max_bytes, 200);
        assert_eq!(c.api_token, "secret-0123456789");
        assert_eq!(c.upload.denied_types, vec!["video/*"]);
        assert_eq!(c.upload.family_max_bytes.get("image"), Some(&10));
        // A partial map in the file keeps the other families' defaults.
        assert_eq!(
            c.upload.family_max_bytes.get("video"),
            Some(&(2048 * 1024 * 1024))
        );
        assert_eq!(c.data_dir, PathBuf::from("/srv/m"));
    }

    #[test]
    fn short_api_tokens_are_refused_with_a_clear_message() {
        for short in ["x", "secret", "0123456789abcde"] {
            let e = env(&[("MEDIA_STORE_API_TOKEN", short)]);
            let err = Config::from_parts("", &e, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("at least 16"), "{err}");
        }
        let err = Config::from_parts("api_token = \"abc\"", &env(&[]), &Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("api_token"), "{err}");
        // Empty (the generated token) and long enough are fine.
        Config::from_parts("api_token = \"\"", &env(&[]), &Overrides::default()).unwrap();
        let e = env(&[("MEDIA_STORE_API_TOKEN", "0123456789abcdef")]);
        Config::from_parts("", &e, &Overrides::default()).unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_env_values() {
        assert!(Config::from_parts("nope = 1", &env(&[]), &Overrides::default()).is_err());
        let e = env(&[("MEDIA_STORE_UPLOAD_MAX_BYTES", "lots")]);
        assert!(Config::from_parts("", &e, &Overrides::default()).is_err());
    }

    #[test]
    fn reload_keeps_restart_only_keys() {
        let running = Config::default();
        let mut edited = Config {
            listen: "127.0.0.1:1".parse().unwrap(),
            ..Config::default()
        };
        edited.upload.max_bytes = 5;
        let (applied, ignored) = edited.with_restart_keys_from(&running);
        assert_eq!(applied.listen, running.listen);
        assert_eq!(applied.upload.max_bytes, 5);
        assert_eq!(ignored, vec!["listen"]);

        // The socket is bound at start; the other serve keys stay live.
        let mut edited = Config::default();
        edited.serve.unix_socket = "/run/x.sock".into();
        edited.serve.unix_socket_mode = 0o600;
        edited.serve.nginx_accel = true;
        let (applied, ignored) = edited.with_restart_keys_from(&running);
        assert_eq!(applied.serve.unix_socket, PathBuf::new());
        assert_eq!(applied.serve.unix_socket_mode, 0o660);
        assert!(applied.serve.nginx_accel);
        assert_eq!(ignored, vec!["serve.unix_socket", "serve.unix_socket_mode"]);
    }

    #[test]
    fn unix_socket_keys_from_file_and_env() {
        let file =
            "[serve]\nunix_socket = \"/run/media-store/http.sock\"\nunix_socket_mode = 0o666\n";
        let c = Config::from_parts(file, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(
            c.serve.unix_socket,
            PathBuf::from("/run/media-store/http.sock")
        );
        assert_eq!(c.serve.unix_socket_mode, 0o666);
        let e = env(&[
            ("MEDIA_STORE_SERVE_UNIX_SOCKET", "/tmp/m.sock"),
            ("MEDIA_STORE_SERVE_UNIX_SOCKET_MODE", "0o600"),
        ]);
        let c = Config::from_parts("", &e, &Overrides::default()).unwrap();
        assert_eq!(c.serve.unix_socket, PathBuf::from("/tmp/m.sock"));
        assert_eq!(c.serve.unix_socket_mode, 0o600);
        let bad = "[serve]\nunix_socket_mode = 0o1777\n";
        assert!(Config::from_parts(bad, &env(&[]), &Overrides::default()).is_err());
    }

    #[test]
    fn every_key_has_an_env_name() {
        let keys = Config::keys();
        assert!(keys.contains(&(
            "upload.max_bytes".into(),
            "MEDIA_STORE_UPLOAD_MAX_BYTES".into()
        )));
        assert!(keys.contains(&("data_dir".into(), "MEDIA_STORE_DATA_DIR".into())));
    }

    #[test]
    fn readme_lists_every_env_var() {
        let readme = include_str!("../README.md");
        for (path, env) in Config::keys() {
            assert!(
                readme.contains(&format!("`{env}`")),
                "README's config table lacks {path} ({env})"
            );
        }
    }

    #[test]
    fn config_keys_reload_column_matches_the_example() {
        let example = include_str!("../media-store.example.toml");
        for (path, env, _, reload) in Config::keys_described() {
            // The env comment, which may go on over the next line.
            let lines: Vec<&str> = example.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.contains(&format!("env {env}")))
                .unwrap_or_else(|| panic!("no env line for {path}"));
            let line = format!("{} {}", lines[at], lines.get(at + 1).unwrap_or(&""));
            assert!(
                line.contains(&format!("reload: {reload}")),
                "{path}: {line}"
            );
        }
        let described = Config::keys_described();
        let max_bytes = described
            .iter()
            .find(|k| k.0 == "upload.max_bytes")
            .unwrap();
        assert_eq!(max_bytes.2, "2147483648");
    }

    #[test]
    fn example_config_lists_every_key() {
        let example = include_str!("../media-store.example.toml");
        for (path, env) in Config::keys() {
            let leaf = path.rsplit('.').next().unwrap();
            assert!(example.contains(&env), "example config lacks {env}");
            assert!(example.contains(leaf), "example config lacks {path}");
        }
        // And the example parses as a valid config equal to the defaults.
        let c = Config::from_parts(example, &BTreeMap::new(), &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
    }
}
