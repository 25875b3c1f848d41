//! A throwaway MariaDB server for the MySQL mirror tests: real `mariadbd`
//! (Debian package `mariadb-server`), temp datadir, its own socket and a free
//! port on 127.0.0.1, `--no-defaults` so no system config leaks in.
//!
//! [`MariaDb::shared`] is one server per test binary (each test takes its own
//! database from [`MariaDb::create_db`]); [`MariaDb::start`] gives a dedicated
//! server a test may kill (-9) and restart on the same datadir and port.
//! Servers die with the test process: each is spawned from a thread that never
//! ends, with PR_SET_PDEATHSIG, so even a crashed run leaves none behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use tempfile::TempDir;

use super::free_port;

const PACKAGE_HINT: &str = "the MySQL mirror tests need MariaDB's server binaries \
    (mariadb-install-db, mariadbd): install the apt package `mariadb-server` \
    (scripts/test does this when they are missing)";

fn find_binary(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: {PACKAGE_HINT}");
}

pub struct MariaDb {
    dir: TempDir,
    /// Held while this server's folder is in use; the shared server is a static
    /// that is never dropped, so later runs sweep folders whose lock is free.
    _alive: nix::fcntl::Flock<std::fs::File>,
    pub port: u16,
    /// The running server; None while killed.
    child: Mutex<Option<u32>>,
}

static SHARED: LazyLock<MariaDb> = LazyLock::new(MariaDb::start);

const ALIVE_LOCK: &str = "alive.lock";

fn lock_file(path: &Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).ok()
}

/// Removes server folders of earlier runs: their lock is free once the process
/// that held it is gone (its mariadbd died with it, PR_SET_PDEATHSIG).
fn sweep_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ms-mariadb-"));
        if is_ours && path.join(ALIVE_LOCK).exists() && lock_file(&path.join(ALIVE_LOCK)).is_some()
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

static DB_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl MariaDb {
    /// The server shared by every test in this binary.
    pub fn shared() -> &'static MariaDb {
        &SHARED
    }

    /// A dedicated server (initialises a fresh datadir; a few seconds).
    pub fn start() -> MariaDb {
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix("ms-mariadb-")
            .tempdir()
            .unwrap();
        let alive = lock_file(&dir.path().join(ALIVE_LOCK)).expect("a new folder's lock is free");
        let datadir = dir.path().join("data");
        let out = Command::new(find_binary("mariadb-install-db"))
            .arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", datadir.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .arg("--skip-name-resolve")
            .output()
            .unwrap_or_else(|e| panic!("cannot run mariadb-install-db ({e}): {PACKAGE_HINT}"));
        assert!(
            out.status.success(),
            "mariadb-install-db failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // A free port: bind, read, release. Another process may grab it before
        // mariadbd does, so start-up is retried on a new port (bounded).
        let mut server = MariaDb {
            dir,
            _alive: alive,
            port: 0,
            child: Mutex::new(None),
        };
        for _attempt in 0..5 {
            server.port = free_port();
            if server.try_launch() {
                return server;
            }
        }
        panic!("mariadbd did not start:\n{}", server.error_log());
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mysqld.sock")
    }

    fn datadir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Starts mariadbd on this datadir and port; waits (bounded) until it
    /// accepts connections. False if it exited (e.g. port taken).
    fn try_launch(&self) -> bool {
        let args = vec![
            "--no-defaults".to_string(),
            "--user=root".into(),
            format!("--datadir={}", self.datadir().display()),
            format!("--socket={}", self.socket().display()),
            format!("--port={}", self.port),
            "--bind-address=127.0.0.1".into(),
            "--skip-name-resolve".into(),
            format!(
                "--pid-file={}",
                self.dir.path().join("mysqld.pid").display()
            ),
            format!(
                "--log-error={}",
                self.dir.path().join("error.log").display()
            ),
            "--character-set-server=utf8mb4".into(),
            "--innodb-buffer-pool-size=128M".into(),
            "--max-connections=500".into(),
        ];
        let log = self.dir.path().join("stdout.log");
        // Spawned from a thread that parks forever: PR_SET_PDEATHSIG fires when the
        // spawning *thread* ends, which is then only at process exit.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut cmd = Command::new(find_binary("mariadbd"));
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(File::create(&log).unwrap())
                .stderr(File::create(log.with_extension("err")).unwrap());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                use std::os::unix::process::CommandExt;
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
            let child = cmd.spawn();
            let keep: Option<Child> = match child {
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
            .unwrap_or_else(|e| panic!("cannot run mariadbd ({e}): {PACKAGE_HINT}"));
        *self.child.lock().unwrap() = Some(pid);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.admin().is_ok() {
                return true;
            }
            if !pid_alive(pid) {
                *self.child.lock().unwrap() = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "mariadbd did not accept connections in 60 s:\n{}",
            self.error_log()
        );
    }

    /// SIGKILL: the server vanishes mid-whatever, as in a crash.
    pub fn kill9(&self) {
        if let Some(pid) = self.child.lock().unwrap().take() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid.as_raw() as u32) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on the same datadir and port (crash recovery).
    pub fn restart(&self) {
        assert!(
            self.try_launch(),
            "mariadbd did not restart on port {}:\n{}",
            self.port,
            self.error_log()
        );
    }

    /// A root connection to no particular database (over the socket).
    pub fn admin(&self) -> mysql::Result<mysql::Conn> {
        let opts = mysql::OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(self.socket().to_string_lossy()))
            .tcp_connect_timeout(Some(Duration::from_secs(2)));
        mysql::Conn::new(opts)
    }

    /// A fresh, empty database for one test.
    pub fn create_db(&self) -> String {
        let n = DB_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("ms_test_{}_{n}", std::process::id());
        self.admin()
            .unwrap()
            .query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            .unwrap();
        name
    }

    /// TCP URL (what production mostly uses).
    pub fn tcp_url(&self, db: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{db}?prefer_socket=false",
            self.port
        )
    }

    /// Unix-socket URL.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "mysql://root@localhost/{db}?socket={}",
            self.socket().display()
        )
    }

    pub fn conn(&self, db: &str) -> mysql::Conn {
        let mut c = self.admin().unwrap();
        c.query_drop(format!("USE {db}")).unwrap();
        c.query_drop("SET time_zone = '+00:00'").unwrap();
        c
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn pid_alive(pid: u32) -> bool {
    // The reaper thread waits on the child, so a dead server is gone (ESRCH).
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}
