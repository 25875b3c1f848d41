//! A real nginx in front of the daemon, run from the shipped site config
//! (`nginx/media-store.conf`) with only its `@` values replaced.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

pub struct Nginx {
    pub base: String,
    child: Child,
    dir: TempDir,
}

fn nginx_binary() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("nginx is not installed: install the Debian package `nginx` (scripts/test does)");
}

/// The shipped site file with its `@` values replaced; each must occur exactly once.
/// `upstream` is nginx's `server` value: `host:port` or `unix:/path`.
pub fn site_config(
    listen: &str,
    upstream: &str,
    blobs: &Path,
    archive_blobs: &Path,
    access_log: &Path,
    s3: &str,
) -> String {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/media-store.conf"),
    )
    .unwrap();
    // The upstream line is matched by its marker: the shipped value (socket or
    // TCP) is the operator's choice, not the tests'.
    let upstream_lines: Vec<&str> = shipped
        .lines()
        .filter(|l| l.trim_start().starts_with("server ") && l.ends_with("; # @upstream"))
        .collect();
    assert_eq!(
        upstream_lines.len(),
        1,
        "nginx/media-store.conf must have one `server ...; # @upstream` line"
    );
    let upstream_line = upstream_lines[0].trim_start().to_owned();
    let mut site = shipped;
    for (from, to) in [
        (
            "listen 80; # @listen",
            format!("listen {listen}; # @listen"),
        ),
        (
            upstream_line.as_str(),
            format!("server {upstream}; # @upstream"),
        ),
        (
            "alias /var/lib/media-store/blobs/; # @blobs",
            format!("alias {}/; # @blobs", blobs.display()),
        ),
        (
            "alias /var/lib/media-store-archive/blobs/; # @archive",
            format!("alias {}/; # @archive", archive_blobs.display()),
        ),
        (
            "access_log /var/log/nginx/media-store.access.log media_store;",
            format!("access_log {} media_store;", access_log.display()),
        ),
        (
            "proxy_pass http://127.0.0.1:3900; # @s3",
            format!("proxy_pass http://{s3}; # @s3"),
        ),
        (
            "proxy_set_header Host 127.0.0.1:3900; # @s3_host",
            format!("proxy_set_header Host {s3}; # @s3_host"),
        ),
    ] {
        assert_eq!(
            site.matches(from).count(),
            1,
            "nginx/media-store.conf must contain `{from}` once"
        );
        site = site.replace(from, &to);
    }
    site
}

/// `/proc/self` belongs to the process's effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

impl Nginx {
    /// Starts nginx on a random loopback port in front of `upstream` (`host:port`
    /// or `unix:/path`), serving `blobs` for X-Accel-Redirect.
    pub fn start(upstream: &str, blobs: &Path) -> Nginx {
        // No archive root: the fallback location points at a folder that
        // does not exist, as in a shipped config with archival off.
        Nginx::start_with_archive(upstream, blobs, &blobs.with_extension("no-archive"))
    }

    /// [`Nginx::start`] with the archive root's `blobs/` folder for the
    /// fallback location.
    pub fn start_with_archive(upstream: &str, blobs: &Path, archive_blobs: &Path) -> Nginx {
        Nginx::start_configured(upstream, blobs, archive_blobs, "127.0.0.1:3900")
    }

    /// [`Nginx::start`] in front of a daemon whose blobs are in S3, at the
    /// endpoint `s3` (`host:port`).
    pub fn start_with_s3(upstream: &str, s3: &str) -> Nginx {
        let none = Path::new("/nonexistent/media-store-blobs");
        Nginx::start_configured(upstream, none, none, s3)
    }

    /// [`Nginx::start`] in front of a daemon with an archive bucket: local
    /// blobs from `blobs`, archived ones from the endpoint `s3` (`host:port`).
    pub fn start_with_blobs_and_s3(upstream: &str, blobs: &Path, s3: &str) -> Nginx {
        Nginx::start_configured(upstream, blobs, &blobs.with_extension("no-archive"), s3)
    }

    fn start_configured(upstream: &str, blobs: &Path, archive_blobs: &Path, s3: &str) -> Nginx {
        let binary = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(p.join(sub)).unwrap();
        }
        // A port picked by binding and dropping can be taken meanwhile: retry.
        for _attempt in 0..5 {
            let port = free_port();
            let site = site_config(
                &format!("127.0.0.1:{port}"),
                upstream,
                blobs,
                archive_blobs,
                &p.join("access.log"),
                s3,
            );
            std::fs::write(p.join("site.conf"), site).unwrap();
            // Workers must read the blobs: as root they would otherwise run as nobody.
            let user = if is_root() { "user root;\n" } else { "" };
            let main = format!(
                "{user}daemon off;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n\
                 client_body_temp_path {p}/client_body;\n  proxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n\
                 include {p}/site.conf;\n}}\n",
                p = p.display()
            );
            let conf = p.join("nginx.conf");
            std::fs::write(&conf, main).unwrap();
            // nginx with this prefix, error log and config.
            let nginx = || {
                let mut cmd = Command::new(&binary);
                cmd.arg("-p")
                    .arg(p)
                    .arg("-e")
                    .arg(p.join("error.log"))
                    .arg("-c")
                    .arg(&conf);
                cmd
            };
            let test = nginx().arg("-t").output().unwrap();
            assert!(
                test.status.success(),
                "nginx -t rejected the config:\n{}",
                String::from_utf8_lossy(&test.stderr)
            );
            let mut child = nginx()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut exited = false;
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        base: format!("http://127.0.0.1:{port}"),
                        child,
                        dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let log = std::fs::read_to_string(p.join("error.log")).unwrap_or_default();
            if exited && log.contains("Address already in use") {
                continue;
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("nginx did not start:\n{log}");
        }
        panic!("nginx found no free port in 5 attempts");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of the master and its workers.
        if super::sigterm_and_wait(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
