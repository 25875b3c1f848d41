//! A throwaway three-node Garage cluster (the S3-compatible object store of
//! <https://garagehq.deuxfleurs.fr>, `garage` v2.5.0) on 127.0.0.1, for the S3
//! blob backend of issue 13: real servers, real quorums, real failures.
//!
//! Each node has its own folder (metadata, data, config, log) in one temp
//! folder, free loopback ports for RPC, S3 and the admin API, and the shared
//! `rpc_secret`; `replication_factor = 3` with `consistency_mode = "consistent"`,
//! so writes and reads need 2 of the 3 nodes. The cluster is bootstrapped
//! through `garage json-api` (the admin API over RPC: JSON in, JSON out, no
//! table parsing): connect the nodes, assign each a role in zone `dc1`, apply
//! layout version 1, wait until the cluster is healthy (about 3 s). Nodes
//! wait [`RPC_TIMEOUT`] for each other, not Garage's 5 minutes.
//!
//! [`Garage::shared`] is one cluster per test binary (each test takes its own
//! bucket and key from [`Garage::create_bucket`]); [`Garage::start`] gives a
//! dedicated cluster a test may kill (SIGKILL), pause (SIGSTOP) and restart
//! (same folders and ports). Servers die with the test process
//! (PR_SET_PDEATHSIG, as for MariaDB).
//!
//! What Garage 2.5 does and does not do over S3 (If-None-Match, checksums,
//! ETags, multipart, presigned URLs, ranges) is written down, and checked, at
//! the top of tests/it/garage.rs.
//!
//! The methods block (subprocesses, polling; `start_node` up to a few
//! seconds): a test whose in-process daemon (`TestApp`) runs on the test's
//! own runtime calls them through `tokio::task::spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use serde_json::{Value, json};
use tempfile::TempDir;

const NODES: usize = 3;
const REGION: &str = "garage";
/// One admin command (a local RPC round trip); a paused node would hang it.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a node waits for another's answer before it asks a third one.
/// Garage's default is 300 s: a node that is alive but stalled (SIGSTOP, a
/// hung disk) then holds requests that picked it for 5 minutes, which no test
/// should wait for; 10 s is ample for 1 MiB blocks on loopback.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Start-up, bootstrap and rejoin; generous for a loaded 2-core machine.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(90);

const INSTALL_HINT: &str = "the S3 backend tests need Garage's `garage` binary v2.5.0: \
    `cargo install --locked garage@2.5.0` puts it in ~/.cargo/bin \
    (scripts/test does this when it is missing)";

/// `garage` from PATH, else from cargo's bin folder (where `cargo install`
/// puts it, often not in PATH for the user running the tests).
pub fn garage_binary() -> PathBuf {
    static FOUND: LazyLock<Option<PathBuf>> = LazyLock::new(|| {
        let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("garage"))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(home) = std::env::var_os("CARGO_HOME") {
            candidates.push(Path::new(&home).join("bin/garage"));
        }
        if let Some(home) = std::env::var_os("HOME") {
            candidates.push(Path::new(&home).join(".cargo/bin/garage"));
        }
        candidates.push("/root/.cargo/bin/garage".into());
        candidates.into_iter().find(|p| p.is_file())
    });
    FOUND.clone().unwrap_or_else(|| {
        panic!("`garage` not found in PATH nor in cargo's bin folder: {INSTALL_HINT}")
    })
}

/// A bucket of its own and a key allowed to read, write and own it.
#[derive(Clone, Debug)]
pub struct S3Bucket {
    /// Node 0's S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Every node's S3 endpoint, by node index (any node serves any request).
    pub endpoints: Vec<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Bucket {
    /// An object_store builder for this bucket through `endpoint`: path-style
    /// requests over plain http, Garage's region, this bucket's key.
    pub fn builder_at(&self, endpoint: &str) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
    }

    pub fn builder(&self) -> AmazonS3Builder {
        self.builder_at(&self.endpoint)
    }

    /// [`S3Bucket::builder_at`] node `i`, with a short connect timeout and few
    /// retries, so that a test against a dead cluster fails in seconds; the
    /// request timeout outlasts two of Garage's [`RPC_TIMEOUT`]s in a row (what
    /// a GET can take while a node is stalled).
    pub fn store_at(&self, i: usize) -> AmazonS3 {
        self.builder_at(&self.endpoints[i])
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_secs(2))
                    .with_timeout(Duration::from_secs(60)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            })
            .build()
            .unwrap()
    }

    pub fn store(&self) -> AmazonS3 {
        self.store_at(0)
    }

    /// The bucket's incomplete multipart uploads (key, upload id), from a
    /// `ListMultipartUploads` signed here with object_store's SigV4 signer
    /// and read with string searches: a check independent of media-store's
    /// own listing (src/store/s3/uploads.rs).
    pub async fn incomplete_uploads(&self) -> Vec<(String, String)> {
        use object_store::aws::{AwsAuthorizer, AwsCredential};
        use object_store::client::{HttpRequest, HttpRequestBody};
        let url = format!("{}/{}?uploads", self.endpoint, self.bucket);
        let mut request: HttpRequest = http::Request::builder()
            .method(http::Method::GET)
            .uri(&url)
            .body(HttpRequestBody::empty())
            .unwrap();
        let credential = AwsCredential {
            key_id: self.access_key_id.clone(),
            secret_key: self.secret_access_key.clone(),
            token: None,
        };
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .unwrap();
        let response = reqwest::Client::new()
            .get(&url)
            .headers(request.headers().clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let xml = response.text().await.unwrap();
        assert!(status.is_success(), "ListMultipartUploads: {status}: {xml}");
        assert!(xml.contains("<IsTruncated>false</IsTruncated>"), "{xml}");
        let field = |s: &str, tag: &str| -> String {
            let open = format!("<{tag}>");
            let start = s.find(&open).map(|i| i + open.len()).unwrap_or(0);
            let end = s[start..].find("</").map_or(start, |i| start + i);
            s[start..end].replace("&amp;", "&")
        };
        xml.split("<Upload>")
            .skip(1)
            .map(|u| (field(u, "Key"), field(u, "UploadId")))
            .collect()
    }
}

struct Node {
    dir: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    /// `<64 hex>@127.0.0.1:<rpc port>`, known once the node has run.
    id: String,
}

impl Node {
    fn config(&self) -> PathBuf {
        self.dir.join("garage.toml")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("garage.log")
    }
    fn hex_id(&self) -> &str {
        self.id.split('@').next().unwrap_or_default()
    }
}

#[derive(Clone, Copy, Default)]
struct Proc {
    /// The running server; None while stopped.
    pid: Option<u32>,
    /// SIGSTOPped: alive, holds its connections, answers nothing.
    paused: bool,
}

pub struct Garage {
    dir: TempDir,
    /// Held while this cluster's folder is in use; the shared cluster is a
    /// static that is never dropped, so later runs sweep folders whose lock is free.
    _alive: nix::fcntl::Flock<File>,
    rpc_secret: String,
    admin_token: String,
    /// `rpc_timeout_msec`; None: Garage's default (300 s).
    rpc_timeout: Option<Duration>,
    nodes: Vec<Node>,
    procs: Mutex<[Proc; NODES]>,
}

static SHARED: LazyLock<Garage> = LazyLock::new(Garage::start);
static BUCKETS: AtomicU32 = AtomicU32::new(0);

const ALIVE_LOCK: &str = "alive.lock";
const DIR_PREFIX: &str = "ms-garage-";

fn lock_file(path: &Path) -> Option<nix::fcntl::Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

/// Removes cluster folders of earlier runs: their lock is free once the
/// process that held it is gone (its servers died with it).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if is_ours && path.join(ALIVE_LOCK).exists() && lock_file(&path.join(ALIVE_LOCK)).is_some()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` distinct loopback ports, free a moment ago (all bound at once, so they
/// differ from each other; another process may still take one meanwhile).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    // The reaper thread waits on the child, so a dead server is gone (ESRCH).
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// The TCP ports `pid` listens on, from its socket inodes and the loopback
/// namespace's tables: proves the ports are the server's own, not another
/// process's that took a port we picked.
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 the inode.
            if f.len() > 9
                && f[3] == "0A"
                && inodes.iter().any(|i| i == f[9])
                && let Some(port) = f[1].rsplit(':').next()
            {
                ports.extend(u16::from_str_radix(port, 16).ok());
            }
        }
    }
    ports
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Garage {
    /// The cluster shared by every test in this binary that stops no node.
    pub fn shared() -> &'static Garage {
        &SHARED
    }

    /// A dedicated cluster (a few seconds: three servers, bootstrap, layout),
    /// with [`RPC_TIMEOUT`] between nodes.
    pub fn start() -> Garage {
        Garage::start_with_rpc_timeout(Some(RPC_TIMEOUT))
    }

    /// [`Garage::start`] with another `rpc_timeout_msec`; None: Garage's
    /// default, 300 s, for which a paused node stalls some requests 5 minutes.
    pub fn start_with_rpc_timeout(rpc_timeout: Option<Duration>) -> Garage {
        sweep_stale_dirs();
        let binary = garage_binary();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .unwrap();
        let alive = lock_file(&dir.path().join(ALIVE_LOCK)).expect("a new folder's lock is free");
        let mut garage = Garage {
            rpc_secret: hex(&rand::random::<[u8; 32]>()),
            admin_token: hex(&rand::random::<[u8; 32]>()),
            rpc_timeout,
            nodes: (0..NODES)
                .map(|i| Node {
                    dir: dir.path().join(format!("node{i}")),
                    rpc_port: 0,
                    s3_port: 0,
                    admin_port: 0,
                    id: String::new(),
                })
                .collect(),
            procs: Mutex::new([Proc::default(); NODES]),
            dir,
            _alive: alive,
        };
        for i in 0..NODES {
            std::fs::create_dir_all(&garage.nodes[i].dir).unwrap();
            // A picked port may be taken before garage binds it: new ports, bounded.
            let mut launched = false;
            for _attempt in 0..5 {
                let ports = free_ports(3);
                let node = &mut garage.nodes[i];
                (node.rpc_port, node.s3_port, node.admin_port) = (ports[0], ports[1], ports[2]);
                garage.write_config(i, &[]);
                if garage.launch(i) {
                    launched = true;
                    break;
                }
            }
            assert!(
                launched,
                "garage node {i} ({}) did not start:\n{}",
                binary.display(),
                garage.log_tails()
            );
        }
        garage.bootstrap();
        garage
    }

    /// Learns the node ids, connects the nodes, applies a layout with all
    /// three as 1 GB storage nodes in one zone, waits until it is healthy.
    fn bootstrap(&mut self) {
        for i in 0..NODES {
            // The node key is written at the server's start; it answers once read.
            let deadline = Instant::now() + CLUSTER_TIMEOUT;
            let id = loop {
                match self.cli(i, &["node", "id", "-q"]) {
                    Ok(out) if out.trim().contains('@') => break out.trim().to_owned(),
                    other => assert!(
                        Instant::now() < deadline,
                        "no node id from garage node {i}: {other:?}\n{}",
                        self.log_tails()
                    ),
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            self.nodes[i].id = id;
        }
        let peers: Vec<String> = self.nodes.iter().map(|n| n.id.clone()).collect();
        let connected = self.bootstrap_api(0, "ConnectClusterNodes", json!(peers[1..]));
        assert!(
            connected
                .as_array()
                .is_some_and(|a| a.iter().all(|r| r["success"] == true)),
            "garage nodes did not connect: {connected}\n{}",
            self.log_tails()
        );
        let roles: Vec<Value> = self
            .nodes
            .iter()
            .map(|n| json!({"id": n.hex_id(), "zone": "dc1", "capacity": 1_000_000_000u64, "tags": []}))
            .collect();
        self.bootstrap_api(0, "UpdateClusterLayout", json!({ "roles": roles }));
        self.bootstrap_api(0, "ApplyClusterLayout", json!({ "version": 1 }));
        // Restarted nodes find the others from their config too (they also
        // keep a peer list in their metadata folder).
        for i in 0..NODES {
            self.write_config(i, &peers);
        }
        self.wait_rejoined(true);
    }

    fn bootstrap_api(&self, i: usize, endpoint: &str, payload: Value) -> Value {
        self.json_api(i, endpoint, &payload).unwrap_or_else(|e| {
            panic!(
                "garage bootstrap: {endpoint} failed: {e}\n{}",
                self.log_tails()
            )
        })
    }

    fn write_config(&self, i: usize, peers: &[String]) {
        let n = &self.nodes[i];
        let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
        let rpc_timeout = self
            .rpc_timeout
            .map(|t| format!("rpc_timeout_msec = {}\n", t.as_millis()))
            .unwrap_or_default();
        // sqlite: bundled in the default build, no system library needed;
        // fsync off (Garage's default): the tests kill processes, they do not
        // cut power, and the page cache survives a SIGKILL.
        let config = format!(
            r#"metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {NODES}
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
bootstrap_peers = [{peers}]
{rpc_timeout}
[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            dir = n.dir.display(),
            rpc = n.rpc_port,
            s3 = n.s3_port,
            admin = n.admin_port,
            secret = self.rpc_secret,
            token = self.admin_token,
            peers = peers.join(", "),
        );
        std::fs::write(n.config(), config).unwrap();
    }

    /// Starts node `i` on its config; waits (bounded) until it listens on its
    /// three ports. False if it did not (exited, or a port was taken): it is
    /// then killed.
    fn launch(&self, i: usize) -> bool {
        let node = &self.nodes[i];
        let config = node.config();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log())
            .unwrap();
        // Spawned from a thread that parks forever: PR_SET_PDEATHSIG fires when
        // the spawning *thread* ends, which is then only at process exit.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new(garage_binary());
            cmd.arg("-c")
                .arg(&config)
                .arg("server")
                .env("RUST_LOG", "garage=info,netapp=info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
                });
            }
            let keep: Option<Child> = match cmd.spawn() {
                Ok(c) => {
                    let _ = tx.send(Ok(c.id()));
                    Some(c)
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    None
                }
            };
            if let Some(mut c) = keep {
                // Reap it when it dies so no zombie lingers, then keep the thread alive.
                let _ = c.wait();
            }
            loop {
                std::thread::park();
            }
        });
        let pid = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot run garage ({e}): {INSTALL_HINT}"));
        self.procs.lock().unwrap()[i] = Proc {
            pid: Some(pid),
            paused: false,
        };
        let wanted = [node.rpc_port, node.s3_port, node.admin_port];
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && pid_alive(pid) {
            let ports = listening_ports(pid);
            if wanted.iter().all(|p| ports.contains(p)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop_node(i);
        false
    }

    /// Runs `garage -c <node i's config> ARGS` (bounded); its stdout.
    fn cli(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let child = Command::new(garage_binary())
            .arg("-c")
            .arg(self.nodes[i].config())
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run garage ({e}): {INSTALL_HINT}"))?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        let out = match rx.recv_timeout(CLI_TIMEOUT) {
            Ok(out) => out.map_err(|e| e.to_string())?,
            Err(_) => {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                let _ = rx.recv();
                return Err(format!(
                    "garage {args:?} on node {i}: no answer in {CLI_TIMEOUT:?}"
                ));
            }
        };
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {args:?} on node {i}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// One admin API call through node `i` (`garage json-api`); `Value::Null`
    /// for endpoints that take no payload.
    pub fn json_api(&self, i: usize, endpoint: &str, payload: &Value) -> Result<Value, String> {
        let payload = payload.to_string();
        let mut args = vec!["json-api", endpoint];
        if payload != "null" {
            args.push(&payload);
        }
        let out = self.cli(i, &args)?;
        serde_json::from_str(&out).map_err(|e| format!("{endpoint}: {e}: {out}"))
    }

    /// Indexes of the nodes that run and are not paused (they answer).
    fn live(&self) -> Vec<usize> {
        let procs = self.procs.lock().unwrap();
        (0..NODES)
            .filter(|&i| procs[i].pid.is_some() && !procs[i].paused)
            .collect()
    }

    /// A node that answers admin commands.
    fn admin_node(&self) -> usize {
        *self
            .live()
            .first()
            .expect("no garage node is running (start_node/start_all first)")
    }

    /// Waits until every answering node sees every other answering node up
    /// (and, with `healthy`, reports the cluster healthy: all three storage
    /// nodes connected, every partition complete). Panics with the logs after
    /// [`CLUSTER_TIMEOUT`].
    fn wait_rejoined(&self, healthy: bool) {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let mut last = String::new();
        loop {
            let live = self.live();
            let ok = live.iter().all(|&j| {
                let seen = match self.json_api(j, "GetClusterStatus", &Value::Null) {
                    Ok(status) => status,
                    Err(e) => {
                        last = e;
                        return false;
                    }
                };
                let up = |hex: &str| {
                    seen["nodes"].as_array().is_some_and(|nodes| {
                        nodes.iter().any(|n| n["id"] == hex && n["isUp"] == true)
                    })
                };
                let all_up = seen["layoutVersion"].as_u64() >= Some(1)
                    && live.iter().all(|&k| up(self.nodes[k].hex_id()));
                if !all_up {
                    last = format!("node {j} sees {seen}");
                    return false;
                }
                if !healthy {
                    return true;
                }
                match self.json_api(j, "GetClusterHealth", &Value::Null) {
                    Ok(h)
                        if h["status"] == "healthy" && h["partitionsAllOk"] == h["partitions"] =>
                    {
                        true
                    }
                    Ok(h) => {
                        last = format!("node {j} health {h}");
                        false
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                }
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage cluster did not {} in {CLUSTER_TIMEOUT:?}: {last}\n{}",
                if healthy {
                    "become healthy"
                } else {
                    "reconnect"
                },
                self.log_tails()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every answering node sees node `i` down: after
    /// [`Garage::pause_node`], once their pings have failed (about 1.5 min).
    pub fn wait_seen_down(&self, i: usize) {
        let hex = self.nodes[i].hex_id();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let seen_down = self.live().iter().all(|&j| {
                self.json_api(j, "GetClusterStatus", &Value::Null)
                    .is_ok_and(|s| {
                        s["nodes"].as_array().is_some_and(|nodes| {
                            nodes.iter().any(|n| n["id"] == hex && n["isUp"] == false)
                        })
                    })
            });
            if seen_down {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "garage nodes still see node {i} up after 180 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A fresh bucket and a key allowed read, write and owner on it (and on
    /// nothing else), so tests on the shared cluster are isolated.
    pub fn create_bucket(&self) -> S3Bucket {
        let n = BUCKETS.fetch_add(1, Ordering::SeqCst);
        // S3 bucket names: 3-63 of [a-z0-9-].
        let name = format!("ms-test-{}-{n}", std::process::id());
        let node = self.admin_node();
        let call = |endpoint: &str, payload: Value| {
            self.json_api(node, endpoint, &payload)
                .unwrap_or_else(|e| panic!("garage {endpoint}: {e}"))
        };
        let bucket = call("CreateBucket", json!({ "globalAlias": name }));
        let key = call("CreateKey", json!({ "name": name }));
        let access_key_id = key["accessKeyId"].as_str().unwrap().to_owned();
        call(
            "AllowBucketKey",
            json!({
                "bucketId": bucket["id"],
                "accessKeyId": access_key_id,
                "permissions": {"read": true, "write": true, "owner": true},
            }),
        );
        let endpoints: Vec<String> = self.endpoints();
        S3Bucket {
            endpoint: endpoints[0].clone(),
            endpoints,
            bucket: name,
            region: REGION.into(),
            access_key_id,
            secret_access_key: key["secretAccessKey"].as_str().unwrap().to_owned(),
        }
    }

    /// Every node's S3 endpoint, by node index.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.s3_port))
            .collect()
    }

    /// Node `i`'s admin API (`Authorization: Bearer <admin_token>`).
    pub fn admin_endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].admin_port)
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Node `i`'s log (all its runs, appended).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].log()).unwrap_or_default()
    }

    fn log_tails(&self) -> String {
        (0..NODES)
            .map(|i| {
                format!(
                    "--- garage node {i} log (tail):\n{}",
                    tail(&self.nodes[i].log(), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// SIGKILL node `i`, as in a crash; returns once it is gone.
    pub fn stop_node(&self, i: usize) {
        let pid = self.procs.lock().unwrap()[i].pid.take();
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.procs.lock().unwrap()[i].paused = false;
    }

    /// Starts node `i` again on its folder and ports; returns once it and the
    /// other answering nodes see each other up. No-op if it runs.
    pub fn start_node(&self, i: usize) {
        if self.procs.lock().unwrap()[i].pid.is_some() {
            return;
        }
        assert!(
            self.launch(i),
            "garage node {i} did not restart on its ports:\n{}",
            self.log_tails()
        );
        self.reconnect();
        self.wait_rejoined(false);
    }

    /// Has each answering node connect to the others now: by itself Garage
    /// may take up to 30 s to reconnect a restarted node (its peering retry
    /// interval), which a test would spend waiting.
    fn reconnect(&self) {
        let live = self.live();
        for &j in &live {
            let others: Vec<&str> = live
                .iter()
                .filter(|&&k| k != j)
                .map(|&k| self.nodes[k].id.as_str())
                .collect();
            // Best effort: wait_rejoined judges the outcome.
            let _ = self.json_api(j, "ConnectClusterNodes", &json!(others));
        }
    }

    /// SIGKILL every node.
    pub fn stop_all(&self) {
        for i in 0..NODES {
            self.stop_node(i);
        }
    }

    /// Starts every stopped node (and resumes paused ones); returns once the
    /// cluster is healthy again.
    pub fn start_all(&self) {
        for i in 0..NODES {
            self.resume_node(i);
            if self.procs.lock().unwrap()[i].pid.is_none() {
                assert!(
                    self.launch(i),
                    "garage node {i} did not restart on its ports:\n{}",
                    self.log_tails()
                );
            }
        }
        self.reconnect();
        self.wait_rejoined(true);
    }

    /// SIGSTOP node `i`: a node that is "slow" without limit: its sockets stay
    /// open, requests to it get no answer, nobody is told it is gone.
    pub fn pause_node(&self, i: usize) {
        let mut procs = self.procs.lock().unwrap();
        let pid = procs[i].pid.expect("pause_node: the node is stopped");
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        procs[i].paused = true;
    }

    /// SIGCONT node `i` after [`Garage::pause_node`].
    pub fn resume_node(&self, i: usize) {
        let mut procs = self.procs.lock().unwrap();
        if let (Some(pid), true) = (procs[i].pid, procs[i].paused) {
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT).unwrap();
            procs[i].paused = false;
        }
    }

    /// The cluster's folder (node folders `node0`..`node2`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped process.
        self.stop_all();
    }
}
