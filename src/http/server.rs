//! Serving: the router on bound listeners until shutdown, then a drain.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use axum::Router;
use axum::http::Request;
use axum::serve::{Listener, ListenerExt as _};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::http::head::HeadCheck;
use crate::http::state::HttpState;

/// Serves `state` on `listener` until `shutdown` completes, then stops accepting
/// and waits for in-flight requests to finish. Tests bind port 0 and pass their
/// own shutdown future; the daemon passes SIGTERM/SIGINT.
pub async fn run(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    run_on(listener, None, state, shutdown).await
}

/// Like [`run`], and also on a Unix socket (`serve.unix_socket`): the same
/// router, one shutdown, both listeners drained before this returns.
pub async fn run_on(
    listener: TcpListener,
    unix: Option<UnixListener>,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let router = crate::http::router(state.clone());
    let stop = CancellationToken::new();
    let graceful = GracefulShutdown::new();
    // Small responses must not wait for delayed ACKs (Nagle): set TCP_NODELAY.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let tcp = accept_loop(
        listener,
        router.clone(),
        state.clone(),
        stop.clone(),
        &graceful,
        |addr: &std::net::SocketAddr| Peer {
            loopback: addr.ip().is_loopback(),
        },
    );
    let unix = async {
        if let Some(unix) = unix {
            accept_loop(unix, router, state, stop.clone(), &graceful, |_| Peer {
                loopback: false,
            })
            .await
        }
    };
    let trigger = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(trigger, tcp, unix);
    // Both listeners are closed: finish the requests in flight, close idle
    // keep-alive connections.
    graceful.shutdown().await;
    Ok(())
}

/// Where a request came from, for routes that care (`/metrics` with
/// `metrics.loopback_only`). The Unix socket counts as remote: nginx relays
/// other hosts' requests on it.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub loopback: bool,
}

/// Accepts connections until `stop`: each is admitted against
/// `limits.max_connections` (else answered 503 and closed), and served by
/// hyper with `limits.header_read_timeout` (which also bounds keep-alive idleness).
async fn accept_loop<L>(
    mut listener: L,
    router: Router,
    state: HttpState,
    stop: CancellationToken,
    graceful: &GracefulShutdown,
    peer: impl Fn(&L::Addr) -> Peer,
) where
    L: Listener,
{
    loop {
        let (io, addr) = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            conn = listener.accept() => conn,
        };
        let settings = state.settings();
        let limits = &settings.limits;
        let Some(admitted) = state.limits().open_connection(limits.max_connections) else {
            let answer = crate::http::limits::connection_refused_response(limits.retry_after_secs);
            tokio::spawn(refuse(io, answer));
            continue;
        };
        let peer = peer(&addr);
        let router = router.clone();
        // Request heads hyper would refuse with an empty body get our JSON
        // answer instead (see `http::head`).
        let (io, bad_head) = HeadCheck::new(io);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(peer);
            if let Some(bad) = bad_head.lock().expect("bad head slot").take() {
                request.extensions_mut().insert(bad);
            }
            router.clone().oneshot(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(admitted);
        });
    }
}

/// Answers a connection over the limit without reading its request, bounded
/// in time so that a client that never reads cannot hold it.
async fn refuse<IO: AsyncWrite + Unpin>(mut io: IO, answer: Vec<u8>) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = io.write_all(&answer).await;
        let _ = io.shutdown().await;
    })
    .await;
}

/// The socket file bound by [`bind_unix`]; removed when dropped, unless another
/// process has replaced it meanwhile.
#[derive(Debug)]
pub struct UnixSocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl UnixSocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds a Unix socket at `path` with permission bits `mode`. A socket file
/// left by a process that died is replaced; a live one (something accepts on
/// it) or a file that is not a socket is an error, never removed.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> io::Result<(UnixListener, UnixSocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path exists and is not a socket",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    let file = UnixSocketFile {
        path: path.to_owned(),
        id: (meta.dev(), meta.ino()),
    };
    // Connecting needs write permission; the umask alone would leave it out.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(name) = group {
        give_to_group(path, name)?;
    }
    Ok((listener, file))
}

/// Lets `group` (e.g. nginx's user's group) use the socket without opening it
/// to every local user. A process may only do this for a group it is in (or
/// as root): under systemd, `SupplementaryGroups=`.
fn give_to_group(path: &Path, name: &str) -> io::Result<()> {
    let group = nix::unistd::Group::from_name(name)
        .map_err(io::Error::from)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no group {name:?}")))?;
    nix::unistd::chown(path, None, Some(group.gid)).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "cannot give the socket to group {name:?}: {e} (the daemon must be a member, \
                 e.g. SupplementaryGroups={name} in its systemd unit)"
            ),
        )
    })
}

/// Completes on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a signal that arrives between
/// start-up (e.g. sd-notify READY) and the first poll is then not lost.
pub fn termination_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining in-flight requests"),
            _ = int.recv() => tracing::info!("SIGINT: draining in-flight requests"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_unix_replaces_stale_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let (listener, file) = bind_unix(&path, 0o660, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        // Live: refused, and left in place.
        let err = bind_unix(&path, 0o660, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(path.exists());
        // Stale (the listener is gone, the file is not): replaced.
        drop(listener);
        std::mem::forget(file);
        let (_listener, file) = bind_unix(&path, 0o600, None).unwrap();
        drop(file);
        assert!(!path.exists(), "the socket file is removed on drop");
        // Not a socket: never removed.
        std::fs::write(&path, b"data").unwrap();
        let err = bind_unix(&path, 0o660, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[tokio::test]
    async fn bind_unix_gives_the_socket_to_the_named_group() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sock");
        // A group the test process is in (the harness may not run as root).
        let own = nix::unistd::Group::from_gid(nix::unistd::getegid())
            .unwrap()
            .expect("the process's group has a name");
        let (_listener, _file) = bind_unix(&path, 0o660, Some(&own.name)).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), own.gid.as_raw());
        let other = dir.path().join("h.sock");
        let err = bind_unix(&other, 0o660, Some("no-such-group-here")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
