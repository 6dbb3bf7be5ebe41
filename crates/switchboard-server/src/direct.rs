//! Event-stream requests answered outside hyper, for their memory.
//!
//! An idle event stream ([`sse`](crate::sse)) served by hyper's HTTP/1 connection keeps that
//! connection's buffers for its whole life: a read buffer that reserves 8 KiB at the first
//! read and again once the request head is split off, and a write buffer made with 8 KiB of
//! capacity — about 10 KiB of a subscriber's 14 KiB (`push-bench --transport sse`), against
//! 1.5 KiB for the subscription itself. hyper sizes them with constants.
//!
//! So the accept loop reads each connection's first request head itself, into a buffer of
//! its own, and parses it (`httparse`, the parser hyper uses). A request that asks for an
//! event stream — `GET`, HTTP/1.1, `Accept: text/event-stream` (what a browser's
//! `EventSource` sends), no body, no `Upgrade`, nothing sent after it — is handed to the
//! service here, and its response written here: the head, then the body's frames as they
//! come (chunked, unless the response says its length), then the connection closes
//! (`Connection: close`; a client's `EventSource` reconnects on a new one anyway). While it
//! waits for the next frame it holds a 512-byte buffer at most and watches the socket, so a
//! client that goes away ends the response (and its subscription) at once.
//!
//! Every other connection — a WebSocket upgrade, a page, a `POST`, a head that does not parse
//! or is larger than [`HEAD_LIMIT`] — goes to hyper with the bytes read so far given back in
//! front of the socket ([`ConnIo`](crate::serve::ConnIo), which also carries the write
//! timeout both paths keep), and is served exactly as before.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use std::io::Write as _;

use bytes::{Buf, BufMut, Bytes};
use futures_util::FutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A request head this long without its end goes to hyper (which takes heads up to its own,
/// larger limit, or refuses them).
const HEAD_LIMIT: usize = 8 * 1024;

/// Headers a request answered here may have (more: hyper's).
const MAX_HEADERS: usize = 64;

/// Body bytes gathered for one write when several frames are ready at once.
const BATCH: usize = 64 * 1024;

/// The write buffer kept between frames; a larger one (a burst) is given back.
const KEPT_BUFFER: usize = 512;

/// The body of a request the service gets: hyper's, or none (a request read here, which has
/// no body).
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// A request hyper read.
    Hyper(Incoming),
    /// A request read here: a `GET` without a body.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What the first read of a connection found.
pub(crate) enum Head {
    /// The client closed (or the socket failed) before a request head was whole.
    Closed,
    /// An event-stream request, to answer here.
    Stream(Box<Request<RequestBody>>),
    /// Anything else, for hyper: the bytes read so far.
    Other(Vec<u8>),
}

/// Reads from `stream` until a request head is whole (or [`HEAD_LIMIT`] is reached) and says
/// who answers it. Not timed: the accept loop's header timeout covers it.
pub(crate) async fn read_head<I: AsyncRead + Unpin>(stream: &mut I) -> Head {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= HEAD_LIMIT {
            return Head::Other(buf);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(HEAD_LIMIT - buf.len()));
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Head::Closed,
            Ok(_) => {}
        }
        match parse(&buf) {
            None => continue,
            Some(Some(req)) => return Head::Stream(Box::new(req)),
            Some(None) => return Head::Other(buf),
        }
    }
}

/// `None`: the head is not whole yet. `Some(None)`: whole (or malformed), and hyper's.
fn parse(buf: &[u8]) -> Option<Option<Request<RequestBody>>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(n)) if n == buf.len() => Some(stream_request(&req)),
        // Bytes after the head (a pipelined request), too many headers, a malformed head:
        // hyper answers them as it always has.
        Ok(httparse::Status::Complete(_)) | Err(_) => Some(None),
    }
}

/// The request, when it is one for an event stream this module answers.
fn stream_request(req: &httparse::Request<'_, '_>) -> Option<Request<RequestBody>> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let mut wants_stream = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || (name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            return None;
        }
        if name.eq_ignore_ascii_case("accept")
            && h.value
                .windows(b"text/event-stream".len())
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        {
            wants_stream = true;
        }
    }
    if !wants_stream {
        return None;
    }
    let mut out = Request::builder()
        .method(Method::GET)
        .uri(req.path?)
        .version(Version::HTTP_11)
        .body(RequestBody::Empty)
        .ok()?;
    let headers = out.headers_mut();
    headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    Some(out)
}

/// Writes `response` to `stream` as an HTTP/1.1 response and closes the connection: when the
/// body ends, when it fails, when the client goes away, or when a write fails (a
/// [`ConnIo`](crate::serve::ConnIo) fails one that makes no progress for the write timeout).
pub(crate) async fn answer<I, B>(mut stream: I, response: Response<B>)
where
    I: AsyncRead + AsyncWrite + Unpin,
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, mut body) = response.into_parts();
    let no_body = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let mut out = Vec::with_capacity(KEPT_BUFFER);
    let chunked = write_head(&mut out, &parts, &body, no_body);
    let mut done = no_body;
    let mut probe = [0u8; 32];
    loop {
        // What the body has ready, in one write.
        while !done && out.len() < BATCH {
            let Some(frame) = body.frame().now_or_never() else {
                break;
            };
            match encode(&mut out, frame, chunked) {
                Step::More => {}
                Step::Done => done = true,
                Step::Failed => return,
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                tracing::debug!(error = %e, "event stream write failed; closing");
                return;
            }
            out.clear();
            if out.capacity() > KEPT_BUFFER {
                out = Vec::new();
            }
        }
        if done {
            let _ = stream.shutdown().await;
            return;
        }
        tokio::select! {
            frame = body.frame() => match encode(&mut out, frame, chunked) {
                Step::More => {}
                Step::Done => done = true,
                Step::Failed => return,
            },
            read = stream.read(&mut probe) => match read {
                // Gone: the body (and what it holds, a subscription) is dropped.
                Ok(0) | Err(_) => return,
                // Bytes after the request (it asked for none): ignored.
                Ok(_) => {}
            },
        }
    }
}

/// Writes the status line and headers into `out`; says whether the body goes chunked.
fn write_head<B: Body>(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &B,
    no_body: bool,
) -> bool {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    for (name, value) in &parts.headers {
        // This module decides the framing and closes the connection after the response.
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if !no_body && !has_length {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(n.to_string().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                chunked = true;
            }
        }
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    chunked
}

/// What the body did.
enum Step {
    More,
    Done,
    Failed,
}

/// Adds one of the body's frames to `out` (trailers are left out).
fn encode<D: Buf, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    out: &mut Vec<u8>,
    frame: Option<Result<Frame<D>, E>>,
    chunked: bool,
) -> Step {
    match frame {
        None => {
            if chunked {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            Step::Done
        }
        Some(Err(e)) => {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            tracing::debug!(error = %e, "event stream body failed; closing");
            Step::Failed
        }
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                let n = data.remaining();
                if n > 0 {
                    if chunked {
                        // Into the buffer itself: no allocation per event.
                        let _ = write!(out, "{n:x}\r\n");
                    }
                    out.put(data);
                    if chunked {
                        out.extend_from_slice(b"\r\n");
                    }
                }
            }
            Step::More
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Option<Option<Request<RequestBody>>> {
        parse(s.as_bytes())
    }

    #[test]
    fn an_eventsource_request_is_answered_here() {
        let Some(Some(req)) = head(
            "GET /ev/a?since=x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\nLast-Event-ID: e:1\r\n\r\n",
        ) else {
            panic!("an EventSource request went to hyper");
        };
        assert_eq!(req.uri().path(), "/ev/a");
        assert_eq!(req.uri().query(), Some("since=x"));
        assert_eq!(req.headers()["last-event-id"], "e:1");
        assert_eq!(req.version(), Version::HTTP_11);
    }

    #[test]
    fn other_requests_go_to_hyper() {
        assert!(head("GET /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\n").is_none());
        for other in [
            "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET /ev/a HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n",
            "POST /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\nContent-Length: 2\r\n\r\nhi",
            "GET /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\nUpgrade: websocket\r\n\r\n",
            "GET /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            "GET /ev/a HTTP/1.1\r\nAccept: text/event-stream\r\nX: \x01\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(
                matches!(head(other), Some(None)),
                "went to the direct path: {other:?}"
            );
        }
    }

    #[test]
    fn chunks_are_framed() {
        let mut out = Vec::new();
        let frame: Option<Result<Frame<Bytes>, std::io::Error>> =
            Some(Ok(Frame::data(Bytes::from_static(b"data: hi\n\n"))));
        assert!(matches!(encode(&mut out, frame, true), Step::More));
        assert!(matches!(
            encode::<Bytes, std::io::Error>(&mut out, None, true),
            Step::Done
        ));
        assert_eq!(out, b"a\r\ndata: hi\n\n\r\n0\r\n\r\n");
    }
}
