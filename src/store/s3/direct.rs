//! Downloads from the bucket read by the stream that sends them on: bytes go
//! from the cluster's socket to the client's in the response's own task, as
//! nginx's proxy moves them in one event loop.
//!
//! Why not object_store's GET, which everything else uses: its client
//! (reqwest) runs each connection as a task of its own on the S3 runtime
//! and hands every chunk it reads to the response body through a channel,
//! two wake-ups across threads per chunk: on a 100 MiB download that was
//! about 40 % of the daemon's CPU (`perf`: `finish_task_switch`, wake-up
//! spinlocks). Why not hyper's connection-level client either, tried first:
//! polled from the response body it still passes each chunk through the
//! body's channel, waking the task once more per chunk. Per 100 MiB the
//! daemon used 59-62 ms of CPU with reqwest, 35-38 with hyper's client and
//! 28-29 reading the socket here, which put the download at 0.75-0.81,
//! 0.85-0.88 and 0.93-0.95 of a direct GET's rate (`benches/s3.sh down`,
//! ROUNDS=40, interleaved). What is written by hand is small: one GET,
//! `Connection: close`, the answer's head parsed by `httparse`, then exactly
//! `Content-Length` bytes; any other answer (chunked, no length, a status
//! other than the one asked for) goes to object_store's GET instead.
//!
//! The request is presigned by object_store's signer (SigV4 in the query,
//! no body to sign) and sent over a connection of its own (only blobs above
//! the small-body limit are streamed, so a connect, ~0.1 ms on a LAN, is
//! little beside the transfer). Plain `http://` endpoints only: an
//! `https://` endpoint, a connection that fails or an unexpected answer
//! falls back to object_store's GET, with its retries and its errors (404 is
//! `NotFound`), so what callers see does not change. A cluster that does not
//! answer within `request_timeout` is not asked again: that fails at once,
//! as a retried GET would after `retry_timeout`.

use std::future::Future;
use std::io;
use std::net::ToSocketAddrs;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use headers::HeaderMapExt as _;

/// One write of an object: its ETag and modification time as the bucket
/// reports them. A re-put (even of the same bytes) changes the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectVersion {
    pub etag: String,
    pub last_modified: SystemTime,
}

impl ObjectVersion {
    pub fn from_headers(headers: &http::HeaderMap) -> Option<ObjectVersion> {
        let etag = headers.get(http::header::ETAG)?.to_str().ok()?.to_owned();
        let last_modified = headers.typed_get::<headers::LastModified>()?.into();
        Some(ObjectVersion {
            etag,
            last_modified,
        })
    }
}

/// What a direct GET came to.
pub(super) enum Outcome {
    /// The answer asked for (200 for the whole object, 206 for a range).
    Opened(DirectBody, Option<ObjectVersion>),
    /// Ask object_store instead (see the module's comment), saying why.
    Fallback(String),
}

/// A presigned GET, connected: the socket is registered with the runtime
/// current when it is made (the caller's, whose task will poll the body),
/// then [`Request::send`] can be driven by any runtime (the S3 runtime's
/// `block_on`) while that one's reactor serves the socket.
pub(super) struct Request {
    socket: tokio::net::TcpStream,
    authority: http::uri::Authority,
    target: String,
    range: Option<Range<u64>>,
    read_timeout: Duration,
}

impl Request {
    /// Connects to the host of `url` (blocking: call it from a blocking
    /// thread of the runtime that will poll the body, inside it).
    pub fn connect(
        url: &str,
        range: Option<Range<u64>>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Request, String> {
        let uri = url
            .parse::<http::Uri>()
            .map_err(|e| format!("presigned URL: {e}"))?;
        let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err("not a plain http:// endpoint".into());
        };
        let target = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let socket = connect(
            authority.host(),
            authority.port_u16().unwrap_or(80),
            connect_timeout,
        )
        .map_err(|e| format!("connect to {authority}: {e}"))?;
        let socket = tokio::net::TcpStream::from_std(socket)
            .map_err(|e| format!("register the socket: {e}"))?;
        Ok(Request {
            socket,
            authority: authority.clone(),
            target,
            range,
            read_timeout,
        })
    }

    /// Sends the GET and waits for the answer's head, `read_timeout` at most.
    pub async fn send(self) -> io::Result<Outcome> {
        let Request {
            mut socket,
            authority,
            target,
            range,
            read_timeout,
        } = self;
        let exchange = async {
            use tokio::io::AsyncWriteExt as _;
            let mut head = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\n");
            if let Some(range) = &range {
                head.push_str(&format!(
                    "Range: bytes={}-{}\r\n",
                    range.start,
                    range.end - 1
                ));
            }
            head.push_str("Connection: close\r\n\r\n");
            socket.write_all(head.as_bytes()).await?;
            read_head(&mut socket).await
        };
        let (status, headers, rest) = match tokio::time::timeout(read_timeout, exchange).await {
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the bucket did not answer a GET within {read_timeout:?}"),
                ));
            }
            Ok(Err(e)) => return Ok(Outcome::Fallback(e.to_string())),
            Ok(Ok(head)) => head,
        };
        let expected = if range.is_some() { 206 } else { 200 };
        if status != expected {
            return Ok(Outcome::Fallback(format!("answered {status}")));
        }
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let (Some(length), false) = (
            length,
            headers.contains_key(http::header::TRANSFER_ENCODING),
        ) else {
            return Ok(Outcome::Fallback(
                "a body without a plain Content-Length".into(),
            ));
        };
        Ok(Outcome::Opened(
            DirectBody {
                socket,
                buf: rest,
                remaining: length,
                read_timeout,
                stall: None,
                fed: false,
            },
            ObjectVersion::from_headers(&headers),
        ))
    }
}

/// Reads until the answer's head is whole: its status, its headers, and
/// the body bytes that came with it.
async fn read_head(
    socket: &mut tokio::net::TcpStream,
) -> io::Result<(u16, http::HeaderMap, BytesMut)> {
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    loop {
        if tokio_util::io::read_buf(socket, &mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the answer's head ended",
            ));
        }
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut answer = httparse::Response::new(&mut parsed);
        let httparse::Status::Complete(head_len) = answer.parse(&buf).map_err(io::Error::other)?
        else {
            if buf.len() > MAX_HEAD {
                return Err(io::Error::other("the answer's head is too long"));
            }
            continue;
        };
        let mut headers = http::HeaderMap::new();
        for header in answer.headers.iter() {
            let name = http::HeaderName::from_bytes(header.name.as_bytes());
            let value = http::HeaderValue::from_bytes(header.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        let status = answer.code.unwrap_or(0);
        let _head = buf.split_to(head_len);
        return Ok((status, headers, buf));
    }
}

/// Bytes asked of the socket per read (what it holds is what comes): as
/// nginx's `proxy_buffer_size` in the shipped config.
const READ_SIZE: usize = 256 * 1024;
/// S3 answers' heads are a few hundred bytes.
const MAX_HEAD: usize = 64 * 1024;

fn connect(host: &str, port: u16, timeout: Duration) -> io::Result<std::net::TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
    for addr in (host.trim_start_matches('[').trim_end_matches(']'), port).to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(socket) => {
                socket.set_nodelay(true)?;
                socket.set_nonblocking(true)?;
                return Ok(socket);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The answer's body: `remaining` bytes read straight from the socket, each
/// read's bytes one chunk.
pub(super) struct DirectBody {
    socket: tokio::net::TcpStream,
    /// Bytes read and not yet handed on (after the head: what came with it).
    buf: BytesMut,
    remaining: u64,
    read_timeout: Duration,
    /// Fires when no data has come for `read_timeout` (the read timeout of
    /// object_store's client, kept): made once, moved on as data comes.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Data came since the stall timer was last set.
    fed: bool,
}

impl futures_util::Stream for DirectBody {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        if this.buf.is_empty() {
            // Chunks handed on keep their part of the buffer alive until
            // sent; a fresh one is taken when little room is left.
            if this.buf.capacity() < READ_SIZE / 4 {
                this.buf.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.socket), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the bucket closed the connection mid-body",
                    ))));
                }
                Poll::Ready(Ok(_)) => this.fed = true,
                Poll::Ready(Err(e)) => {
                    this.remaining = 0;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending => {
                    let deadline = tokio::time::Instant::now() + this.read_timeout;
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if std::mem::take(&mut this.fed) {
                        stall.as_mut().reset(deadline);
                    }
                    if stall.as_mut().poll(cx).is_ready() {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "the bucket sent nothing for {:?} mid-download",
                                this.read_timeout
                            ),
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
        let n = (this.buf.len() as u64).min(this.remaining) as usize;
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(this.buf.split_to(n).freeze())))
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP mechanics against a real socket: a one-shot server on
    //! 127.0.0.1 that answers as told (a bucket's behaviours are tested
    //! against Garage in tests/it/s3.rs).
    use super::*;
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const HEAD_200: &str = "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nETag: \"abc\"\r\n\
                            Last-Modified: Mon, 30 Nov 2026 10:00:00 GMT\r\n\r\n";

    /// Serves one connection: reads the request head, writes `head`, then
    /// `body` in pieces, then holds the connection open for `hold`. Returns
    /// the request head the server saw, and the connected request.
    async fn serve_once(
        head: &str,
        body: Vec<u8>,
        hold: Duration,
        range: Option<Range<u64>>,
    ) -> (tokio::task::JoinHandle<String>, Request) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/bucket/key?X-Amz-Signature=x",
            listener.local_addr().unwrap()
        );
        let head = head.to_owned();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed before its request head ended");
                request.extend_from_slice(&buf[..n]);
            }
            // The client may be gone (a timeout): writes may fail.
            let _ = socket.write_all(head.as_bytes()).await;
            for piece in body.chunks(1000) {
                let _ = socket.write_all(piece).await;
            }
            tokio::time::sleep(hold).await;
            String::from_utf8(request).unwrap()
        });
        // Connected as the store does it: on a blocking thread of this runtime.
        let request = tokio::task::spawn_blocking(move || {
            Request::connect(
                &url,
                range,
                Duration::from_secs(1),
                Duration::from_millis(300),
            )
        })
        .await
        .unwrap()
        .unwrap();
        (server, request)
    }

    async fn drain(body: DirectBody) -> Result<Vec<u8>, io::Error> {
        let mut body = Box::pin(body);
        let mut got = Vec::new();
        while let Some(chunk) = body.next().await {
            got.extend_from_slice(&chunk?);
        }
        Ok(got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_whole_answer_streams_with_its_version_and_the_signed_target() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let (server, request) = serve_once(HEAD_200, body.clone(), Duration::ZERO, None).await;
        let Outcome::Opened(stream, version) = request.send().await.unwrap() else {
            panic!("a 200 for a whole GET was not taken");
        };
        assert_eq!(drain(stream).await.unwrap(), body);
        let version = version.unwrap();
        assert_eq!(version.etag, "\"abc\"");
        let seen = server.await.unwrap();
        assert!(
            seen.starts_with("GET /bucket/key?X-Amz-Signature=x HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(!seen.to_ascii_lowercase().contains("range:"), "{seen}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_asks_for_its_bytes_and_takes_only_a_206() {
        let (server, request) =
            serve_once(HEAD_200, vec![0; 5000], Duration::ZERO, Some(10..20)).await;
        // A 200 to a ranged GET is not what was asked: object_store's turn.
        assert!(matches!(
            request.send().await.unwrap(),
            Outcome::Fallback(_)
        ));
        let seen = server.await.unwrap().to_ascii_lowercase();
        assert!(seen.contains("range: bytes=10-19\r\n"), "{seen}");
        let head = "HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\n\r\n";
        let (_server, request) = serve_once(head, vec![7; 10], Duration::ZERO, Some(10..20)).await;
        let Outcome::Opened(stream, _) = request.send().await.unwrap() else {
            panic!("a 206 for a ranged GET was not taken");
        };
        assert_eq!(drain(stream).await.unwrap(), vec![7; 10]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_answers_and_endpoints_fall_back_to_object_store() {
        let head = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let (_server, request) = serve_once(head, Vec::new(), Duration::ZERO, None).await;
        assert!(
            matches!(request.send().await.unwrap(), Outcome::Fallback(why) if why.contains("404"))
        );
        let https = tokio::task::spawn_blocking(|| {
            Request::connect(
                "https://127.0.0.1:1/b/k",
                None,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .map(|_| ())
        });
        assert!(https.await.unwrap().is_err());
        // Nobody listening: a failed connect is object_store's to retry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let refused = tokio::task::spawn_blocking(move || {
            Request::connect(
                &format!("http://127.0.0.1:{port}/b/k"),
                None,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .map(|_| ())
        });
        assert!(refused.await.unwrap().is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_body_is_content_length_bytes_and_a_short_one_fails() {
        // More bytes than announced: only the announced ones are the body.
        let (_server, request) = serve_once(HEAD_200, vec![3; 6000], Duration::ZERO, None).await;
        let Outcome::Opened(stream, _) = request.send().await.unwrap() else {
            panic!("the 200 was not taken");
        };
        assert_eq!(drain(stream).await.unwrap(), vec![3; 5000]);
        // The connection closed after 4000 of 5000: an error, not an end.
        let (_server, request) = serve_once(HEAD_200, vec![3; 4000], Duration::ZERO, None).await;
        let Outcome::Opened(stream, _) = request.send().await.unwrap() else {
            panic!("the 200 was not taken");
        };
        let e = drain(stream).await.expect_err("a short body ended cleanly");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // A chunked body (or one without a length) is object_store's to read.
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_server, request) = serve_once(
            chunked,
            b"5\r\nhello\r\n0\r\n\r\n".to_vec(),
            Duration::ZERO,
            None,
        )
        .await;
        assert!(matches!(
            request.send().await.unwrap(),
            Outcome::Fallback(_)
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_answer_and_a_stalled_body_time_out() {
        // No head within the read timeout (300 ms): a timeout, not a fallback.
        let (_server, request) = serve_once("", Vec::new(), Duration::from_secs(3), None).await;
        let started = std::time::Instant::now();
        let e = request.send().await.err().expect("no answer was taken");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Half the body, then nothing: the stream fails after the read timeout.
        let (_server, request) =
            serve_once(HEAD_200, vec![1; 2500], Duration::from_secs(3), None).await;
        let Outcome::Opened(stream, _) = request.send().await.unwrap() else {
            panic!("the 200 was not taken");
        };
        let started = std::time::Instant::now();
        let e = drain(stream)
            .await
            .expect_err("a stalled body ended cleanly");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
