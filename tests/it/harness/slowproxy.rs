//! A TCP proxy on 127.0.0.1 that makes what is behind it slow: each new
//! connection waits `connect_delay` before it is connected through, and each
//! chunk (up to 64 KiB) read from either side waits `chunk_delay` before it
//! is passed on. Both can change while connections are open (a cluster that
//! gets slow, then fast again, under a running daemon). For the S3 backend's
//! fault tests: the daemon talks to Garage's S3 endpoint through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: usize = 64 * 1024;

#[derive(Default)]
struct Delays {
    connect_ms: AtomicU64,
    chunk_ms: AtomicU64,
}

pub struct SlowProxy {
    addr: SocketAddr,
    delays: Arc<Delays>,
    task: tokio::task::JoinHandle<()>,
}

impl SlowProxy {
    /// Listens on a free loopback port and forwards to `target` (an
    /// `http://127.0.0.1:PORT` endpoint or a `host:port`), with no delay yet.
    /// Runs on the caller's tokio runtime.
    pub async fn start(target: &str) -> SlowProxy {
        let target = target
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let delays = Arc::new(Delays::default());
        let d = delays.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (d, target) = (d.clone(), target.clone());
                tokio::spawn(async move {
                    let wait = d.connect_ms.load(Ordering::Relaxed);
                    if wait > 0 {
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    // Either direction ending ends the connection.
                    tokio::select! {
                        _ = pump(cr, sw, d.clone()) => {}
                        _ = pump(sr, cw, d) => {}
                    }
                });
            }
        });
        SlowProxy { addr, delays, task }
    }

    /// `http://127.0.0.1:PORT`, to use as the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_delays(&self, connect: Duration, chunk: Duration) {
        self.delays
            .connect_ms
            .store(connect.as_millis() as u64, Ordering::Relaxed);
        self.delays
            .chunk_ms
            .store(chunk.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delays: Arc<Delays>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let wait = delays.chunk_ms.load(Ordering::Relaxed);
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
