//! `serve.unix_socket`: the real binary serves the same router on a Unix socket
//! besides TCP, replaces a stale socket file, and removes its own on shutdown.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use crate::harness::*;

/// One HTTP/1.1 request over the socket; returns the whole answer as text.
fn get_over_socket(socket: &Path, path: &str, auth: bool) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    let auth = if auth {
        format!("authorization: {}\r\n", bearer())
    } else {
        String::new()
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: media\r\n{auth}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test]
async fn the_daemon_serves_on_its_unix_socket_too() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("http.sock");
    // A socket file left by a daemon that was killed: nothing accepts on it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());

    // A group other than the daemon's own when the tests run as root (who may
    // give files to any group), else the own group.
    let group = if nix::unistd::geteuid().is_root() {
        nix::unistd::Group::from_name("nogroup")
            .unwrap()
            .expect("Debian's nogroup")
    } else {
        nix::unistd::Group::from_gid(nix::unistd::getegid())
            .unwrap()
            .unwrap()
    };
    let toml = format!(
        "[serve]\nunix_socket = \"{}\"\nunix_socket_mode = 0o666\nunix_socket_group = \"{}\"\n",
        socket.display(),
        group.name
    );
    let mut daemon = TestDaemon::start(&dir.path().join("data"), &dir.path().join("log"), &toml);
    let stdout = std::fs::read_to_string(dir.path().join("log/stdout.log")).unwrap();
    assert!(
        stdout.contains(&format!("also serving on unix:{}\n", socket.display())),
        "{stdout}"
    );
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().gid(),
        group.gid.as_raw()
    );

    let health = get_over_socket(&socket, "/healthz", false);
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // The service API with its token, as over TCP.
    let (status, media) = upload_raw(&daemon.client, &daemon.base, 1, unique_png(3)).await;
    assert_eq!(status, 201);
    let id = media["id"].as_i64().unwrap();
    let meta = get_over_socket(&socket, &format!("/v1/media/{id}"), true);
    assert!(meta.starts_with("HTTP/1.1 200"), "{meta}");
    assert!(meta.contains(&format!("\"id\":{id}")), "{meta}");
    let refused = get_over_socket(&socket, &format!("/v1/media/{id}"), false);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    // A second daemon on the same socket is refused and leaves it alone.
    let second = std::process::Command::new(TestDaemon::binary())
        .args(["serve", "--listen=127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data2"))
        .env("MEDIA_STORE_SERVE_UNIX_SOCKET", &socket)
        .env("MEDIA_STORE_API_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another process is listening"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(get_over_socket(&socket, "/healthz", false).starts_with("HTTP/1.1 200"));

    // SIGTERM drains both listeners and removes the socket file.
    let status = daemon.terminate();
    assert!(status.success(), "{}", daemon.logs());
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}
