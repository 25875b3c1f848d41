//! Upload forms: streaming `multipart/form-data` with exactly one field,
//! `file`, and bounded framing (issue #14).
//!
//! Written here rather than taken from `multer` (axum's `Multipart`) because an
//! upload must stay bounded in memory and CPU whatever the client sends: every
//! byte of the body is counted against a limit before any parsing; a part's
//! headers, the preamble and the epilogue are each at most a few KiB (multer
//! buffers a part header that never ends, rescanning it on every chunk); a
//! field other than `file`, or a second field, is refused as soon as its
//! headers are read, before the upload is stored. The content of `file` is
//! passed on in the chunks it arrived in, never collected.

use std::fmt::Display;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _};

use crate::error::{Classify, ErrorKind};

/// The one field an upload form has.
pub const FILE_FIELD: &str = "file";
/// Longest header block of one part (Content-Disposition, Content-Type, ...).
pub const MAX_PART_HEADERS: usize = 8 * 1024;
/// Longest preamble before the first boundary, and epilogue after the last.
const MAX_PREAMBLE: usize = 8 * 1024;
const MAX_EPILOGUE: usize = 8 * 1024;
/// Longest rest of a boundary line (transport padding) before its CRLF.
const MAX_BOUNDARY_LINE: usize = 256;
/// RFC 2046: a boundary has 1 to 70 characters.
const MAX_BOUNDARY: usize = 70;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    /// Broken framing: no boundary, headers too long, a body that stops early.
    #[error("malformed multipart body: {0}")]
    Malformed(String),
    /// The first field is not `file`.
    #[error("the form's field {0:?} is not `file`; an upload form has one field, `file`")]
    UnknownField(String),
    #[error("the form has no `file` field")]
    NoFileField,
    /// A field after `file`.
    #[error("the form has a field after `file`; an upload form has one field, `file`")]
    ExtraField,
    /// The whole body passed `limit` bytes (plus the allowance for framing).
    #[error("the request body is larger than the {limit} bytes allowed")]
    TooLarge { limit: u64 },
    /// The client's body stream failed (disconnect, bad chunked encoding).
    #[error("could not read the upload body: {0}")]
    Body(String),
}

impl Classify for FormError {
    fn kind(&self) -> ErrorKind {
        match self {
            FormError::TooLarge { .. } => ErrorKind::PayloadTooLarge,
            _ => ErrorKind::BadRequest,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            FormError::Malformed(_) | FormError::ExtraField => "bad_multipart",
            FormError::UnknownField(_) | FormError::NoFileField => "missing_file_field",
            FormError::TooLarge { .. } => "too_large",
            FormError::Body(_) => "bad_body",
        }
    }
}

/// The boundary of a `multipart/form-data` Content-Type.
pub fn boundary(content_type: &str) -> Result<String, FormError> {
    let bad = |m: &str| FormError::Malformed(m.to_owned());
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("multipart/form-data") {
        return Err(bad("the Content-Type is not multipart/form-data"));
    }
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        if value.is_empty() || value.len() > MAX_BOUNDARY || !value.is_ascii() {
            return Err(bad("the boundary must have 1 to 70 ASCII characters"));
        }
        return Ok(value.to_owned());
    }
    Err(bad("the Content-Type has no boundary"))
}

/// What the `file` field's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The client's filename (`filename*` preferred over `filename`), raw.
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    Content,
    Done,
}

enum AfterBoundary {
    Part,
    Close,
}

/// A form being read from `body`.
pub struct Form<S> {
    body: S,
    buf: BytesMut,
    /// `\r\n--boundary`.
    delimiter: Vec<u8>,
    state: State,
    read: u64,
    limit: u64,
    allowance: u64,
    error: Option<FormError>,
}

impl<S, E> Form<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    /// A form whose body may have at most `limit + allowance` bytes
    /// (`allowance` for boundaries and headers); more is [`FormError::TooLarge`]
    /// naming `limit`.
    pub fn new(body: S, boundary: &str, limit: u64, allowance: u64) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let mut buf = BytesMut::with_capacity(MAX_PART_HEADERS);
        // The first boundary needs no CRLF before it: pretend there was one.
        buf.extend_from_slice(b"\r\n");
        Form {
            body,
            buf,
            delimiter,
            state: State::Preamble,
            read: 0,
            limit,
            allowance,
            error: None,
        }
    }

    /// Every byte received so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The body stream, for draining what is left after a refusal.
    pub fn body_mut(&mut self) -> &mut S {
        &mut self.body
    }

    /// The error that ended [`Form::file_stream`], if one did.
    pub fn take_error(&mut self) -> Option<FormError> {
        self.error.take()
    }

    /// Appends the next chunk of the body; false at its end.
    async fn fill(&mut self) -> Result<bool, FormError> {
        match self.body.next().await {
            None => Ok(false),
            Some(Err(e)) => Err(FormError::Body(e.to_string())),
            Some(Ok(chunk)) => {
                self.read = self.read.saturating_add(chunk.len() as u64);
                if self.read > self.limit.saturating_add(self.allowance) {
                    return Err(FormError::TooLarge { limit: self.limit });
                }
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
        }
    }

    /// Reads up to the content of the `file` field, which must come first.
    pub async fn file_field(&mut self) -> Result<FilePart, FormError> {
        if self.state != State::Preamble {
            return Err(FormError::Malformed("the form was read already".into()));
        }
        loop {
            if let Some(at) = find(&self.buf, &self.delimiter) {
                self.buf.advance(at + self.delimiter.len());
                break;
            }
            if self.buf.len() > MAX_PREAMBLE + self.delimiter.len() {
                return Err(FormError::Malformed(format!(
                    "no boundary within the first {MAX_PREAMBLE} bytes"
                )));
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(
                    "the body ends before the first boundary".into(),
                ));
            }
        }
        if let AfterBoundary::Close = self.after_boundary().await? {
            self.finish().await?;
            return Err(FormError::NoFileField);
        }
        let headers = self.part_headers().await?;
        let (name, filename) = disposition(&headers)?;
        if name != FILE_FIELD {
            return Err(FormError::UnknownField(name));
        }
        self.state = State::Content;
        Ok(FilePart { filename })
    }

    /// The rest of a boundary line: `--` ends the form, else padding and CRLF.
    async fn after_boundary(&mut self) -> Result<AfterBoundary, FormError> {
        loop {
            if self.buf.starts_with(b"--") {
                self.buf.advance(2);
                return Ok(AfterBoundary::Close);
            }
            if let Some(at) = find(&self.buf, b"\r\n") {
                if self.buf[..at].iter().all(|b| *b == b' ' || *b == b'\t') {
                    self.buf.advance(at + 2);
                    return Ok(AfterBoundary::Part);
                }
                return Err(FormError::Malformed(
                    "a boundary is followed by other characters".into(),
                ));
            }
            if self.buf.len() > MAX_BOUNDARY_LINE {
                return Err(FormError::Malformed("a boundary line is too long".into()));
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(
                    "the body ends inside a boundary line".into(),
                ));
            }
        }
    }

    /// A part's header block (without the blank line that ends it).
    async fn part_headers(&mut self) -> Result<Bytes, FormError> {
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.advance(2);
                return Ok(Bytes::new());
            }
            // Searched within the bound only: never more than a few KiB rescanned.
            let window = self.buf.len().min(MAX_PART_HEADERS + 4);
            if let Some(at) = find(&self.buf[..window], b"\r\n\r\n") {
                let headers = self.buf.split_to(at).freeze();
                self.buf.advance(4);
                return Ok(headers);
            }
            if self.buf.len() > MAX_PART_HEADERS {
                return Err(FormError::Malformed(format!(
                    "a part's headers are longer than {MAX_PART_HEADERS} bytes"
                )));
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(
                    "the body ends inside a part's headers".into(),
                ));
            }
        }
    }

    /// After the closing boundary: at most a short epilogue, then the end.
    async fn finish(&mut self) -> Result<(), FormError> {
        loop {
            if self.buf.len() > MAX_EPILOGUE {
                return Err(FormError::Malformed(format!(
                    "more than {MAX_EPILOGUE} bytes after the closing boundary"
                )));
            }
            if !self.fill().await? {
                self.buf.clear();
                self.state = State::Done;
                return Ok(());
            }
        }
    }

    /// The next piece of the `file` field's content; `None` once it ended and
    /// the form was checked to end with it.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, FormError> {
        loop {
            if self.state != State::Content {
                return Ok(None);
            }
            if let Some(at) = find(&self.buf, &self.delimiter) {
                if at > 0 {
                    return Ok(Some(self.buf.split_to(at).freeze()));
                }
                self.buf.advance(self.delimiter.len());
                return match self.after_boundary().await? {
                    AfterBoundary::Close => {
                        self.finish().await?;
                        Ok(None)
                    }
                    AfterBoundary::Part => Err(FormError::ExtraField),
                };
            }
            // Everything but a possible start of the delimiter is content.
            let keep = self.delimiter.len() - 1;
            if self.buf.len() > keep {
                let n = self.buf.len() - keep;
                return Ok(Some(self.buf.split_to(n).freeze()));
            }
            if !self.fill().await? {
                return Err(FormError::Malformed(
                    "the body ends inside the `file` field (no closing boundary)".into(),
                ));
            }
        }
    }

    /// The `file` field's content as a stream; an error is kept for
    /// [`Form::take_error`] and ends the stream.
    pub fn file_stream(&mut self) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + '_
    where
        S: Send,
    {
        Box::pin(futures_util::stream::unfold(
            Some(self),
            |form| async move {
                let form = form?;
                match form.next_chunk().await {
                    Ok(Some(chunk)) => Some((Ok(chunk), Some(form))),
                    Ok(None) => None,
                    Err(e) => {
                        let message = e.to_string();
                        form.error = Some(e);
                        Some((Err(message), None))
                    }
                }
            },
        ))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// The field name and filename from a part's `Content-Disposition: form-data`.
fn disposition(headers: &[u8]) -> Result<(String, Option<String>), FormError> {
    let bad = |m: &str| FormError::Malformed(m.to_owned());
    let mut found = None;
    for line in headers.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return Err(bad("a part header has no `:`"));
        };
        if line[..colon].eq_ignore_ascii_case(b"content-disposition") {
            if found.is_some() {
                return Err(bad("a part has two Content-Disposition headers"));
            }
            found = Some(String::from_utf8_lossy(&line[colon + 1..]).into_owned());
        }
    }
    let value = found.ok_or_else(|| bad("a part has no Content-Disposition header"))?;
    let params = parameters(&value).ok_or_else(|| bad("unreadable Content-Disposition"))?;
    let mut words = value.split(';');
    if !words
        .next()
        .is_some_and(|w| w.trim().eq_ignore_ascii_case("form-data"))
    {
        return Err(bad("a part's Content-Disposition is not form-data"));
    }
    let get = |n: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let name = get("name").ok_or_else(|| bad("a part has no field name"))?;
    // RFC 5987 `filename*=UTF-8''...` wins over the plain `filename`.
    let extended = get("filename*").and_then(|v| {
        let (charset, rest) = v.split_once('\'')?;
        let (_lang, encoded) = rest.split_once('\'')?;
        charset.eq_ignore_ascii_case("utf-8").then(|| {
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8_lossy()
                .into_owned()
        })
    });
    Ok((name, extended.or_else(|| get("filename"))))
}

/// `; key=value; key="quoted \" value"` after the disposition type.
fn parameters(value: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    // Skip the disposition type.
    for c in chars.by_ref() {
        if c == ';' {
            break;
        }
    }
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ';') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') {
            return None;
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => val.push(chars.next()?),
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ';' {
                    break;
                }
                val.push(c);
                chars.next();
            }
            val = val.trim_end().to_owned();
        }
        out.push((key.trim().to_owned(), val));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Chunks = futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, String>>>;

    fn form_of(body: &[u8], split: usize, limit: u64) -> Form<Chunks> {
        let chunks: Vec<Result<Bytes, String>> = body
            .chunks(split.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Form::new(futures_util::stream::iter(chunks), "XyZ", limit, 1024)
    }

    async fn read_all(body: &[u8], split: usize) -> Result<(FilePart, Vec<u8>), FormError> {
        let mut form = form_of(body, split, 1 << 20);
        let part = form.file_field().await?;
        let mut content = Vec::new();
        while let Some(chunk) = form.next_chunk().await? {
            content.extend_from_slice(&chunk);
        }
        Ok((part, content))
    }

    const GOOD: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".png\"\r\nContent-Type: image/png\r\n\r\nhello\r\n--Xy\r\nworld\r\n--XyZ--\r\n";

    #[tokio::test]
    async fn reads_the_file_field_at_every_chunk_split() {
        for split in 1..GOOD.len() + 1 {
            let (part, content) = read_all(GOOD, split).await.unwrap();
            assert_eq!(part.filename.as_deref(), Some("a \"b\".png"), "{split}");
            assert_eq!(content, b"hello\r\n--Xy\r\nworld", "{split}");
        }
    }

    #[tokio::test]
    async fn extended_filenames_and_transport_padding() {
        let body = b"preamble\r\n--XyZ  \r\ncontent-disposition: form-data; name=file; filename=\"x.txt\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe.txt\r\n\r\n\r\n--XyZ--";
        let (part, content) = read_all(body, 7).await.unwrap();
        assert_eq!(part.filename.as_deref(), Some("Grüße.txt"));
        assert!(content.is_empty());
    }

    #[tokio::test]
    async fn refuses_other_and_extra_fields() {
        let other =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--XyZ--\r\n";
        assert_eq!(
            read_all(other, 5).await.unwrap_err(),
            FormError::UnknownField("note".into())
        );
        let extra = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nx\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\ny\r\n--XyZ--\r\n";
        assert_eq!(read_all(extra, 5).await.unwrap_err(), FormError::ExtraField);
        assert_eq!(
            read_all(b"--XyZ--\r\n", 3).await.unwrap_err(),
            FormError::NoFileField
        );
    }

    #[tokio::test]
    async fn framing_is_bounded() {
        // A part header that never ends: refused once it passes the bound.
        let mut endless =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ".to_vec();
        endless.extend(std::iter::repeat_n(b'a', 100_000));
        let mut form = form_of(&endless, 1000, 1 << 20);
        let err = form.file_field().await.unwrap_err();
        assert!(matches!(err, FormError::Malformed(ref m) if m.contains("headers are longer")));
        assert!(form.bytes_read() < (MAX_PART_HEADERS + 2000) as u64);
        // No boundary at all.
        let garbage = vec![b'x'; 50_000];
        assert!(matches!(
            read_all(&garbage, 999).await.unwrap_err(),
            FormError::Malformed(_)
        ));
        // Epilogue, truncated body, missing Content-Disposition.
        let mut long_tail = GOOD.to_vec();
        long_tail.extend(std::iter::repeat_n(b'z', MAX_EPILOGUE + 10));
        assert!(matches!(
            read_all(&long_tail, 4096).await.unwrap_err(),
            FormError::Malformed(_)
        ));
        assert!(matches!(
            read_all(&GOOD[..GOOD.len() - 12], 10).await.unwrap_err(),
            FormError::Malformed(_)
        ));
        assert!(matches!(
            read_all(b"--XyZ\r\nContent-Type: a/b\r\n\r\nx\r\n--XyZ--", 10)
                .await
                .unwrap_err(),
            FormError::Malformed(_)
        ));
    }

    #[tokio::test]
    async fn counts_every_byte_against_the_limit() {
        let mut big = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'q', 5000));
        big.extend_from_slice(b"\r\n--XyZ--\r\n");
        let mut form = form_of(&big, 100, 3000);
        form.file_field().await.unwrap();
        let err = loop {
            match form.next_chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("read past the limit"),
                Err(e) => break e,
            }
        };
        assert_eq!(err, FormError::TooLarge { limit: 3000 });
        assert!(form.bytes_read() <= 3000 + 1024 + 100);
    }

    #[test]
    fn boundaries_from_content_types() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").unwrap(),
            "abc"
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=x; boundary=\"a b\"").unwrap(),
            "a b"
        );
        assert!(boundary("multipart/form-data").is_err());
        assert!(boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))).is_err());
        assert!(boundary("text/plain; boundary=x").is_err());
    }
}
