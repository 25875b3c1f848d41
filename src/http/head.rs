//! Request heads that hyper would refuse with an empty body, answered with
//! our JSON envelope instead (issue #12, point 5).
//!
//! hyper (1.x) parses each request head itself and answers one it cannot
//! accept (a `Content-Length` that is not a number or overflows, conflicting
//! lengths, a malformed request line or header line, too many or too large
//! headers, an overlong URI) with its own `400`, `414` or `431` and an empty
//! body, before any code of ours runs; it has no hook to change that answer.
//!
//! [`HeadCheck`] wraps each accepted connection and reads every request head
//! before hyper does, with the parser hyper uses (httparse, same
//! configuration, same limits) and hyper's own rules for the request line and
//! the body length. A head hyper would accept is handed over byte for byte. A
//! head it would refuse is withheld, and hyper is given instead a minimal
//! valid request (`GET /_bad_request`, `Connection: close`) while the
//! connection's [`BadHeadSlot`] holds what was wrong: the accept loop puts
//! that [`BadHead`] into the request's extensions, and [`answer_bad_head`]
//! answers it with the JSON error (the access log and metrics see it as any
//! other request). Requests before it on the connection (keep-alive,
//! pipelining) are answered first, in order, as always; the connection then
//! closes, and whatever the client still sends is read and discarded for a
//! short while first (a lingering close), so that it sees the answer rather
//! than a reset.
//!
//! To find where the next head starts, the wrapper follows the framing of
//! each request: it models bodies sized by `Content-Length` (and none). After
//! a request it does not model (a chunked body, an upgrade), it stops looking
//! and passes every byte through for the rest of the connection, so hyper's
//! own answer stands there. Body bytes are never copied: they are read
//! straight into hyper's buffer, never more than the current body has left.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::ApiError;

/// hyper's limits (hyper 1.x `proto::h1`): headers per request, read buffer
/// (a head must fit in it) and URI length.
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// hyper's largest body length (`DecodedLength::MAX_LEN`).
const MAX_BODY_LEN: u64 = u64::MAX - 2;
/// Bytes read from the socket at a time while looking for a head.
const READ_CHUNK: usize = 8192;
/// After a refused head: what the client still sends is discarded, up to
/// these bounds, before the connection is closed.
const LINGER_BYTES: u64 = 1 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// The request hyper is given in place of a refused head.
const SUBSTITUTE: &[u8] = b"GET /_bad_request HTTP/1.1\r\nconnection: close\r\n\r\n";

/// What was wrong with a refused request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHead {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

const BAD_LENGTH: BadHead = BadHead {
    status: StatusCode::BAD_REQUEST,
    code: "bad_header",
    message: "`Content-Length` must be one whole number of bytes, from 0 to 18446744073709551613 \
              (several `Content-Length` headers must agree)",
};
const MALFORMED: BadHead = BadHead {
    status: StatusCode::BAD_REQUEST,
    code: "bad_request",
    message: "the request line or a header line is malformed (RFC 9112)",
};
const BAD_TRANSFER_ENCODING: BadHead = BadHead {
    status: StatusCode::BAD_REQUEST,
    code: "bad_header",
    message: "`Transfer-Encoding` needs HTTP/1.1 and must end with `chunked`",
};
const URI_TOO_LONG: BadHead = BadHead {
    status: StatusCode::URI_TOO_LONG,
    code: "uri_too_long",
    message: "the request target is longer than 65534 bytes",
};
const HEADERS_TOO_LARGE: BadHead = BadHead {
    status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    code: "headers_too_large",
    message: "the request has more than 100 header lines, or its head is larger than 417792 bytes",
};

/// Where a connection's [`HeadCheck`] leaves a refused head for the request
/// that stands in for it.
pub type BadHeadSlot = Arc<Mutex<Option<BadHead>>>;

/// Innermost-but-one layer: answers the stand-in for a refused head.
pub async fn answer_bad_head(request: Request, next: Next) -> Response {
    match request.extensions().get::<BadHead>() {
        Some(bad) => {
            let mut response = ApiError {
                status: bad.status,
                code: bad.code,
                message: bad.message.to_owned(),
            }
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        None => next.run(request).await,
    }
}

/// What the wrapper does with the bytes it reads.
#[derive(Debug)]
enum State {
    /// Looking for the next head in `buf`.
    Head,
    /// Handing over a checked head (`left` bytes at the front of `buf`),
    /// then its body of `body` bytes.
    Handing { left: usize, body: u64 },
    /// Passing `left` more body bytes through.
    Body { left: u64 },
    /// Not looking any more: every byte passes through.
    Pass,
    /// A refused head was replaced; `left` bytes of the stand-in remain to be
    /// handed over. Nothing more is read for hyper.
    Refused { left: usize },
}

/// A connection's socket as hyper sees it: see the module documentation.
pub struct HeadCheck<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> {
    /// `None` only once dropped (the lingering close takes it).
    io: Option<IO>,
    state: State,
    buf: BytesMut,
    eof: bool,
    slot: BadHeadSlot,
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> HeadCheck<IO> {
    pub fn new(io: IO) -> (Self, BadHeadSlot) {
        let slot = BadHeadSlot::default();
        let check = HeadCheck {
            io: Some(io),
            state: State::Head,
            buf: BytesMut::new(),
            eof: false,
            slot: slot.clone(),
        };
        (check, slot)
    }

    fn io(&mut self) -> Pin<&mut IO> {
        Pin::new(
            self.io
                .as_mut()
                .expect("is a bug: connection used after drop"),
        )
    }

    /// Moves up to `max` bytes from the front of `buf` into `out`.
    fn give(&mut self, out: &mut ReadBuf<'_>, max: usize) -> usize {
        let n = max.min(out.remaining()).min(self.buf.len());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        n
    }

    /// Reads more of the socket into `buf`.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.buf.reserve(READ_CHUNK);
        let io = Pin::new(
            self.io
                .as_mut()
                .expect("is a bug: connection used after drop"),
        );
        let mut read = ReadBuf::uninit(self.buf.spare_capacity_mut());
        ready!(io.poll_read(cx, &mut read))?;
        let n = read.filled().len();
        if n == 0 {
            self.eof = true;
        }
        // SAFETY: the read initialised (and filled) the first `n` bytes of
        // the spare capacity.
        unsafe { self.buf.set_len(self.buf.len() + n) };
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncRead for HeadCheck<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.state {
                State::Pass => {
                    if !this.buf.is_empty() {
                        this.give(out, usize::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return this.io().poll_read(cx, out);
                }
                State::Refused { left } => {
                    if left > 0 {
                        let n = left.min(out.remaining());
                        let start = SUBSTITUTE.len() - left;
                        out.put_slice(&SUBSTITUTE[start..start + n]);
                        this.state = State::Refused { left: left - n };
                        return Poll::Ready(Ok(()));
                    }
                    // The stand-in closes the connection; hyper reads only
                    // to notice a client going away, which no longer matters
                    // (an EOF now would abort the answer).
                    return Poll::Pending;
                }
                State::Handing { left, body } => {
                    if left == 0 {
                        this.state = State::Body { left: body };
                        continue;
                    }
                    let n = this.give(out, left);
                    this.state = State::Handing {
                        left: left - n,
                        body,
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Body { left } => {
                    if left == 0 {
                        this.state = State::Head;
                        continue;
                    }
                    let max = usize::try_from(left).unwrap_or(usize::MAX);
                    if !this.buf.is_empty() {
                        let n = this.give(out, max);
                        this.state = State::Body {
                            left: left - n as u64,
                        };
                        return Poll::Ready(Ok(()));
                    }
                    // Straight into hyper's buffer, never past this body.
                    let limit = max.min(out.remaining());
                    let mut part = out.take(limit);
                    ready!(this.io().poll_read(cx, &mut part))?;
                    let n = part.filled().len();
                    // SAFETY: `part` borrows `out`'s unfilled memory, and the
                    // read initialised (and filled) its first `n` bytes.
                    unsafe { out.assume_init(n) };
                    out.advance(n);
                    this.state = State::Body {
                        left: left - n as u64,
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Head => {
                    if this.buf.is_empty() && this.eof {
                        return Poll::Ready(Ok(()));
                    }
                    match inspect(&this.buf) {
                        Verdict::Incomplete if this.eof => this.state = State::Pass,
                        Verdict::Incomplete => ready!(this.fill(cx))?,
                        Verdict::Accept { head, body } => {
                            this.state = State::Handing { left: head, body }
                        }
                        Verdict::Unmodelled => this.state = State::Pass,
                        Verdict::Refuse(bad) => {
                            *this.slot.lock().expect("bad head slot") = Some(bad);
                            this.buf.clear();
                            this.state = State::Refused {
                                left: SUBSTITUTE.len(),
                            };
                        }
                    }
                }
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncWrite for HeadCheck<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static> Drop for HeadCheck<IO> {
    fn drop(&mut self) {
        if !matches!(self.state, State::Refused { .. }) {
            return;
        }
        let (Some(mut io), Ok(runtime)) = (self.io.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        // A lingering close: the answer went out (and the write side was shut
        // down by hyper); the rest of what the client sends is discarded.
        runtime.spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut scratch = vec![0u8; 16 * 1024];
            let mut left = LINGER_BYTES;
            let deadline = tokio::time::Instant::now() + LINGER_TIME;
            while left > 0 {
                match tokio::time::timeout_at(deadline, io.read(&mut scratch)).await {
                    Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n as u64),
                    _ => break,
                }
            }
        });
    }
}

/// What [`inspect`] made of the bytes at the start of a request.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Not a whole head yet.
    Incomplete,
    /// A head of `head` bytes that hyper accepts, then `body` bytes of body.
    Accept { head: usize, body: u64 },
    /// A head hyper accepts whose body framing is not modelled here
    /// (chunked, or an upgrade): stop looking.
    Unmodelled,
    /// A head hyper would refuse.
    Refuse(BadHead),
}

/// Judges the head at the start of `buf` as hyper 1.x does
/// (`proto::h1::role::Server::parse`).
fn inspect(buf: &[u8]) -> Verdict {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head = match httparse::ParserConfig::default().parse_request(&mut request, buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD_BYTES => {
            return Verdict::Refuse(HEADERS_TOO_LARGE);
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Verdict::Refuse(HEADERS_TOO_LARGE);
        }
        Ok(httparse::Status::Partial) => return Verdict::Incomplete,
        Err(httparse::Error::TooManyHeaders) => return Verdict::Refuse(HEADERS_TOO_LARGE),
        Err(_) => return Verdict::Refuse(MALFORMED),
    };
    let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version)
    else {
        return Verdict::Refuse(MALFORMED);
    };
    if path.len() > MAX_URI_LEN {
        return Verdict::Refuse(URI_TOO_LONG);
    }
    let Ok(method) = axum::http::Method::from_bytes(method.as_bytes()) else {
        return Verdict::Refuse(MALFORMED);
    };
    if axum::http::Uri::try_from(path).is_err() {
        return Verdict::Refuse(MALFORMED);
    }
    if request.headers.iter().any(|h| h.name.len() >= 1 << 16) {
        return Verdict::Refuse(HEADERS_TOO_LARGE);
    }
    let http11 = version == 1;
    let mut length: Option<u64> = None;
    let (mut te, mut chunked, mut upgrade) = (false, false, method == axum::http::Method::CONNECT);
    for h in request.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Verdict::Refuse(BAD_TRANSFER_ENCODING);
            }
            te = true;
            length = None;
            chunked = HeaderValue::from_bytes(h.value)
                .ok()
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .and_then(|s| s.rsplit(',').next().map(|e| e.trim().to_owned()))
                .is_some_and(|e| e.eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            if te {
                continue;
            }
            let Some(len) = content_length(h.value) else {
                return Verdict::Refuse(BAD_LENGTH);
            };
            match length {
                Some(previous) if previous != len => return Verdict::Refuse(BAD_LENGTH),
                _ => {}
            }
            if len > MAX_BODY_LEN {
                return Verdict::Refuse(BAD_LENGTH);
            }
            length = Some(len);
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            upgrade = http11;
        }
    }
    if te && !chunked {
        return Verdict::Refuse(BAD_TRANSFER_ENCODING);
    }
    if te || upgrade {
        return Verdict::Unmodelled;
    }
    Verdict::Accept {
        head,
        body: length.unwrap_or(0),
    }
}

/// One `Content-Length` value as hyper reads it: comma-separated whole
/// numbers (digits only, no sign), all equal.
fn content_length(value: &[u8]) -> Option<u64> {
    let text = HeaderValue::from_bytes(value).ok()?;
    let text = text.to_str().ok()?;
    let mut length = None;
    for part in text.split(',') {
        let digits = part.trim().as_bytes();
        if digits.is_empty() {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        match length {
            Some(l) if l != n => return None,
            _ => length = Some(n),
        }
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(head: &str) -> Verdict {
        inspect(head.as_bytes())
    }

    #[test]
    fn heads_are_judged_as_hyper_judges_them() {
        let ok = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            judge(ok),
            Verdict::Accept {
                head: ok.len(),
                body: 0
            }
        );
        let post = "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            judge(post),
            Verdict::Accept {
                head: post.len() - 5,
                body: 5
            }
        );
        assert_eq!(judge("GET /x HTTP/1.1\r\nHost: a\r\n"), Verdict::Incomplete);
        for bad in [
            "99999999999999999999999",
            "-1",
            "1e3",
            "",
            "+5",
            "5, 6",
            "18446744073709551614",
        ] {
            assert_eq!(
                judge(&format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n")),
                Verdict::Refuse(BAD_LENGTH),
                "{bad:?}"
            );
        }
        assert_eq!(
            judge("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n"),
            Verdict::Accept { head: 41, body: 5 }
        );
        assert_eq!(
            judge("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Verdict::Refuse(BAD_LENGTH)
        );
        assert_eq!(
            judge("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n"),
            Verdict::Unmodelled,
            "a length after chunked is ignored, as hyper does"
        );
        assert_eq!(
            judge("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Verdict::Refuse(BAD_TRANSFER_ENCODING)
        );
        assert_eq!(
            judge("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Verdict::Refuse(BAD_TRANSFER_ENCODING)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Verdict::Unmodelled
        );
        assert_eq!(judge("G@T / HTTP/1.1\r\n\r\n"), Verdict::Refuse(MALFORMED));
        assert_eq!(
            judge("GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Verdict::Refuse(MALFORMED)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            judge(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Verdict::Refuse(HEADERS_TOO_LARGE)
        );
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(judge(&huge), Verdict::Refuse(HEADERS_TOO_LARGE));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_URI_LEN));
        assert_eq!(judge(&long), Verdict::Refuse(URI_TOO_LONG));
    }
}
