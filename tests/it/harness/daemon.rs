//! Two ways to run the daemon: `TestApp` (in-process server on a real socket)
//! and `TestDaemon` (the real `media-store` binary as a child process).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use media_store::config::{Config, Overrides};
use tempfile::TempDir;

use super::teardown::Teardown;
use super::{TOKEN, wait_until};

/// The in-process server: fast, and still real HTTP over a loopback socket.
pub struct TestApp {
    pub base: String,
    pub data: PathBuf,
    pub client: reqwest::Client,
    /// `serve.unix_socket`, when the test asked for one.
    pub socket: Option<PathBuf>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _socket_file: Option<media_store::http::server::UnixSocketFile>,
    teardown: Teardown,
    _dir: Option<TempDir>,
    _socket_dir: Option<TempDir>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_with("").await
    }

    /// Starts with extra TOML config (the data folder and token are set by the harness).
    pub async fn start_with(toml: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Self::start_in(dir.path(), toml).await;
        app._dir = Some(dir);
        app
    }

    /// Also serves on a Unix socket (`serve.unix_socket`, set through its
    /// environment variable) in a folder of its own.
    pub async fn start_with_socket(toml: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let socket_dir = tempfile::tempdir().unwrap();
        let socket = socket_dir.path().join("http.sock");
        let env = [(
            "MEDIA_STORE_SERVE_UNIX_SOCKET".to_string(),
            socket.display().to_string(),
        )];
        let mut app = Self::start_configured(
            dir.path(),
            toml,
            &env,
            std::sync::Arc::new(media_store::clock::SystemClock),
        )
        .await;
        app._dir = Some(dir);
        app._socket_dir = Some(socket_dir);
        app
    }

    /// Starts with a clock the test moves (signed URL expiry).
    pub async fn start_with_clock(
        toml: &str,
        clock: std::sync::Arc<dyn media_store::clock::Clock>,
    ) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut app = Self::start_in_with_clock(dir.path(), toml, clock).await;
        app._dir = Some(dir);
        app
    }

    /// Starts on an existing data folder (restart tests).
    pub async fn start_in(data: &Path, toml: &str) -> TestApp {
        Self::start_in_with_clock(
            data,
            toml,
            std::sync::Arc::new(media_store::clock::SystemClock),
        )
        .await
    }

    pub async fn start_in_with_clock(
        data: &Path,
        toml: &str,
        clock: std::sync::Arc<dyn media_store::clock::Clock>,
    ) -> TestApp {
        Self::start_configured(data, toml, &[], clock).await
    }

    async fn start_configured(
        data: &Path,
        toml: &str,
        extra_env: &[(String, String)],
        clock: std::sync::Arc<dyn media_store::clock::Clock>,
    ) -> TestApp {
        let mut env = BTreeMap::from([("MEDIA_STORE_API_TOKEN".to_string(), TOKEN.to_string())]);
        env.extend(extra_env.iter().cloned());
        let overrides = Overrides {
            data_dir: Some(data.to_owned()),
            listen: Some("127.0.0.1:0".parse().unwrap()),
        };
        let config = Config::from_parts(toml, &env, &overrides).expect("test config is valid");
        let teardown = Teardown::new(data, &config);
        let socket = config.serve.unix_socket.clone();
        let mode = config.serve.unix_socket_mode;
        // Tests configure fresh, empty archive roots: initialise them on
        // purpose, as an operator does with `media-store init-archive`.
        if config.archive.root().is_some() {
            media_store::app::init_archive(&config, false).expect("archive root initialises");
        }
        let (state, _) = media_store::AppState::open_with_clock(config, clock).expect("app opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (unix, socket_file) = if socket.as_os_str().is_empty() {
            (None, None)
        } else {
            let (unix, file) = media_store::http::server::bind_unix(&socket, mode, None).unwrap();
            (Some(unix), Some(file))
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The app (its data-folder lock, the mirror's worker) lives as long as it serves.
        let task = tokio::spawn(async move {
            let http = state.http().clone();
            let served = media_store::http::server::run_on(listener, unix, http, async {
                let _ = rx.await;
            })
            .await;
            drop(state);
            served
        });
        TestApp {
            base: format!("http://{addr}"),
            data: data.to_owned(),
            client: reqwest::Client::new(),
            socket: socket_file.as_ref().map(|f| f.path().to_owned()),
            shutdown: Some(tx),
            task: Some(task),
            _socket_file: socket_file,
            teardown,
            _dir: None,
            _socket_dir: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The data folder was left damaged on purpose: teardown skips the invariants.
    pub fn accept_damage(&mut self, why: &'static str) {
        self.teardown.accept_damage(why);
    }

    /// Stops the server, waits until it has released the data folder, and
    /// runs the teardown checks.
    pub async fn stop(mut self) {
        let drained = self.teardown.outbox_drained();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        // The index writer thread exits, and the folder lock goes, once the
        // last state handle is gone.
        let lock = self.data.join("daemon.lock");
        wait_until(Duration::from_secs(10), "the data folder's lock", || {
            data_folder_free(&lock)
        })
        .await;
        let problems: Vec<String> = [drained, self.teardown.at_rest()]
            .into_iter()
            .filter_map(Result::err)
            .collect();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}

/// True once no daemon holds the data folder's lock (taken and released here).
fn data_folder_free(lock: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(lock) else {
        return true;
    };
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok()
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The outbox drains while the server runs; the invariants are read
        // from the side (WAL: readers never wait) as it shuts down.
        let drained = if self.teardown.skip() {
            Ok(())
        } else {
            self.teardown.outbox_drained()
        };
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if self.teardown.skip() {
            return;
        }
        if let Err(e) = drained.and_then(|()| self.teardown.at_rest()) {
            panic!("{e}");
        }
    }
}

/// The real binary, for signals, crashes and restarts.
pub struct TestDaemon {
    pub base: String,
    pub data: PathBuf,
    pub child: Child,
    log_dir: PathBuf,
    pub client: reqwest::Client,
    teardown: Teardown,
}

impl TestDaemon {
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_media-store")
    }

    /// Starts `media-store serve` on `data` with a generated config.
    pub fn start(data: &Path, log_dir: &Path, toml: &str) -> TestDaemon {
        Self::start_with_env(data, log_dir, toml, &[])
    }

    /// [`TestDaemon::start`] with extra environment variables (e.g. systemd's).
    pub fn start_with_env(
        data: &Path,
        log_dir: &Path,
        toml: &str,
        env: &[(&str, &Path)],
    ) -> TestDaemon {
        Self::start_spawned(data, log_dir, toml, env, |c| c.spawn())
    }

    /// [`TestDaemon::start_with_env`] with the process started by `spawn`
    /// (the power-cut harness spawns it under its `syncfs` watch).
    pub fn start_spawned(
        data: &Path,
        log_dir: &Path,
        toml: &str,
        env: &[(&str, &Path)],
        spawn: impl FnOnce(&mut Command) -> std::io::Result<Child>,
    ) -> TestDaemon {
        std::fs::create_dir_all(log_dir).unwrap();
        let config = log_dir.join("config.toml");
        std::fs::write(&config, toml).unwrap();
        let stdout_path = log_dir.join("stdout.log");
        let child = spawn(
            Command::new(Self::binary())
                .arg("serve")
                .arg("--listen=127.0.0.1:0")
                .arg("--data-dir")
                .arg(data)
                .arg("--config")
                .arg(&config)
                .env("MEDIA_STORE_API_TOKEN", TOKEN)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(File::create(&stdout_path).unwrap())
                .stderr(File::create(log_dir.join("stderr.log")).unwrap()),
        )
        .expect("spawn media-store");
        let mut daemon = TestDaemon {
            base: String::new(),
            data: data.to_owned(),
            child,
            log_dir: log_dir.to_owned(),
            client: reqwest::Client::new(),
            teardown: Teardown::for_toml(data, toml),
        };
        daemon.base = daemon.wait_for_address(&stdout_path);
        daemon
    }

    fn wait_for_address(&mut self, stdout: &Path) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(stdout).unwrap_or_default();
            if let Some(line) = text.lines().find_map(|l| l.strip_prefix("listening on ")) {
                return line.trim().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "media-store exited with {status} before listening:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "media-store did not report its address in 20 s:\n{}",
            self.logs()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.log_dir.join(n)).unwrap_or_default();
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            read("stdout.log"),
            read("stderr.log")
        )
    }

    /// The config file the daemon reads (and watches).
    pub fn config_path(&self) -> PathBuf {
        self.log_dir.join("config.toml")
    }

    /// Replaces the config file as editors do (a new file renamed over it).
    pub fn replace_config(&self, toml: &str) {
        let new = self.log_dir.join("config.toml.new");
        std::fs::write(&new, toml).unwrap();
        std::fs::rename(&new, self.config_path()).unwrap();
    }

    /// Waits (bounded) until the daemon's output contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the daemon's output after {limit:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The daemon's (current, peak) resident memory in KiB: VmRSS and VmHWM
    /// from `/proc/<pid>/status`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the daemon is running");
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status:\n{status}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The data folder was left damaged on purpose: teardown skips the invariants.
    pub fn accept_damage(&mut self, why: &'static str) {
        self.teardown.accept_damage(why);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(status) = super::sigterm_and_wait(&mut self.child, Duration::from_secs(20)) {
            return status;
        }
        self.kill9();
        panic!(
            "media-store did not exit within 20 s of SIGTERM:\n{}",
            self.logs()
        );
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        // The outbox drains only while the daemon runs; after a kill there is
        // no one to drain it.
        let drained = if running && !self.teardown.skip() {
            self.teardown.outbox_drained()
        } else {
            Ok(())
        };
        if running && super::sigterm_and_wait(&mut self.child, Duration::from_secs(5)).is_none() {
            self.kill9();
        }
        if self.teardown.skip() {
            return;
        }
        if let Err(e) = drained.and_then(|()| self.teardown.at_rest()) {
            panic!("{e}\n{}", self.logs());
        }
    }
}
