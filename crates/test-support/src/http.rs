//! HTTP clients for streaming responses: server-sent events and line streams.

use std::time::Duration;

use serde_json::Value;

/// An HTTP client with a 20 s timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap() // ok: test harness, a panic fails the calling test
}

/// One server-sent event (or comment block).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: Option<String>,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().unwrap()).unwrap() // ok: test harness, a panic fails the calling test
    }
}

/// A streaming HTTP response read chunk by chunk.
pub struct Body {
    pub response: reqwest::Response,
    buf: String,
    pub ended: bool,
}

impl Body {
    pub fn new(response: reqwest::Response) -> Body {
        Body {
            response,
            buf: String::new(),
            ended: false,
        }
    }

    /// Reads until `sep` is in the buffer; the text before it. `None` if the body ended.
    pub async fn until(&mut self, sep: &str, within: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.find(sep) {
                let block = self.buf[..i].to_owned();
                self.buf.drain(..i + sep.len());
                return Some(block);
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => panic!("nothing within {within:?}; have {:?}", self.buf),
                Ok(Ok(Some(c))) => self.buf.push_str(std::str::from_utf8(&c).unwrap()), // ok: test harness, a panic fails the calling test
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next SSE block, comments included. `None` when the stream ended.
    pub async fn next_block(&mut self) -> Option<Event> {
        let block = self.until("\n\n", Duration::from_secs(5)).await?;
        let mut ev = Event::default();
        for line in sse_lines(&block) {
            if line.is_empty() {
                continue;
            }
            if let Some(c) = line.strip_prefix(':') {
                ev.comment = Some(c.trim().to_owned());
                continue;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            let v = v.strip_prefix(' ').unwrap_or(v).to_owned();
            match k {
                "id" => ev.id = Some(v),
                "event" => ev.event = Some(v),
                "data" => {
                    ev.data = Some(match ev.data.take() {
                        Some(d) => format!("{d}\n{v}"),
                        None => v,
                    })
                }
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
        Some(ev)
    }

    /// The next SSE event with data (comments skipped).
    pub async fn next_event(&mut self) -> Event {
        loop {
            match self.next_block().await {
                Some(ev) if ev.data.is_some() => return ev,
                Some(_) => continue,
                None => panic!("the event stream ended"),
            }
        }
    }

    /// The next non-empty line of a `/sub/` stream.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            let line = self.until("\n", Duration::from_secs(5)).await?;
            if !line.is_empty() {
                return Some(line);
            }
        }
    }

    /// The next line of a line stream whose JSON `"type"` is not `skip_type`, as JSON.
    pub async fn next_json_except(&mut self, skip_type: &str) -> Value {
        loop {
            let line = self.next_line().await.expect("the stream ended"); // ok: test harness, a panic fails the calling test
            let v: Value = serde_json::from_str(&line).unwrap(); // ok: test harness, a panic fails the calling test
            if v["type"] != skip_type {
                return v;
            }
        }
    }

    /// Whether the body ends within `within` (reading and dropping what comes).
    pub async fn ends_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.ended {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(c))) => self.buf.push_str(std::str::from_utf8(&c).unwrap()), // ok: test harness, a panic fails the calling test
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
        true
    }

    /// What was read but not consumed yet.
    pub fn buffered(&self) -> &str {
        &self.buf
    }
}

/// The lines of an SSE block as a browser's EventSource parser splits them: at `\r\n`, `\r`
/// and `\n` alike.
pub fn sse_lines(block: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = block;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let end = if rest[i..].starts_with("\r\n") {
            i + 2
        } else {
            i + 1
        };
        rest = &rest[end..];
    }
    lines.push(rest);
    lines
}
