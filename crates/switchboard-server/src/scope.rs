//! The scope of a connection: what the handshake told us about it.
//!
//! As Channels' `scope` dict: the path and its route parameters, the query string, the headers,
//! cookies, the peer address, the subprotocols the client offered, and the user an
//! authentication hook set. Extensions carry any typed data of the application's.

use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

/// The scope of one connection.
#[derive(Default)]
pub struct Scope {
    path: String,
    params: Vec<(String, String)>,
    query: String,
    headers: Headers,
    peer: Option<SocketAddr>,
    subprotocols: Vec<String>,
    user: Option<String>,
    extensions: http::Extensions,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("path", &self.path)
            .field("params", &self.params)
            .field("query", &self.query)
            .field("peer", &self.peer)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Scope {
    /// A scope for `path` (with an optional `?query`), as a test or a router builds it.
    pub fn new(path_and_query: &str) -> Scope {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, q),
            None => (path_and_query, ""),
        };
        Scope {
            path: path.to_owned(),
            query: query.to_owned(),
            ..Scope::default()
        }
    }

    /// Adds a route parameter.
    pub fn with_param(mut self, name: impl Into<String>, value: impl Into<String>) -> Scope {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Adds a header. Invalid header names or values are ignored.
    pub fn with_header(mut self, name: &str, value: &str) -> Scope {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            self.headers.append(&n, &v);
        }
        self
    }

    /// Sets the peer address.
    pub fn with_peer(mut self, peer: SocketAddr) -> Scope {
        self.peer = Some(peer);
        self
    }

    /// Sets the subprotocols the client offered.
    pub fn with_subprotocols<I: IntoIterator<Item = S>, S: Into<String>>(
        mut self,
        protocols: I,
    ) -> Scope {
        self.subprotocols = protocols.into_iter().map(Into::into).collect();
        self
    }

    pub(crate) fn from_parts(
        path: String,
        query: String,
        params: Vec<(String, String)>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Scope {
        let subprotocols = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Scope {
            path,
            params,
            query,
            headers: Headers::from_map(headers),
            peer,
            subprotocols,
            user: None,
            extensions: http::Extensions::new(),
        }
    }

    /// The request path (without the query).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A route parameter (`room` in `/ws/chat/{room}/`), percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All route parameters.
    pub fn params(&self) -> &[(String, String)] {
        &self.params
    }

    /// The raw query string (without `?`).
    pub fn query_string(&self) -> &str {
        &self.query
    }

    /// The first value of a query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The request headers, as an `http::HeaderMap`.
    ///
    /// The scope keeps the headers in one compact block (about a quarter of a `HeaderMap`'s
    /// size); the map is made the first time it is asked for, and then kept, beside the block,
    /// as long as the connection. [`header`](Scope::header), [`header_all`](Scope::header_all)
    /// and [`cookie`](Scope::cookie) read the block and make no map; so does
    /// [`to_header_map`](Scope::to_header_map), which makes a map to use and drop.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.map()
    }

    /// The request headers, mutably (see [`headers`](Scope::headers)); from then on the map is
    /// what the scope keeps. A consumer that no longer needs them after `connect` may drop them
    /// (`*conn.scope_mut().headers_mut() = HeaderMap::new()`) to keep an idle connection small.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers.map_mut()
    }

    /// The request headers as a new `http::HeaderMap`, which the scope does not keep (for a
    /// function that takes a map, called once, as at `connect`).
    pub fn to_header_map(&self) -> HeaderMap {
        match self.headers.map.get() {
            Some(map) => (**map).clone(),
            None => self.headers.decode(),
        }
    }

    /// One header as text (the first, if the client sent it more than once), if present and
    /// valid text (visible ASCII, as [`HeaderValue::to_str`] reads it). The name is matched
    /// without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .pairs()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| header_text(v))
    }

    /// Every value of a header, in the client's order, that is valid text (as
    /// [`header`](Scope::header)).
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .pairs()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .filter_map(|(_, v)| header_text(v))
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.header_all(header::COOKIE.as_str())
            .flat_map(cookie::Cookie::split_parse)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }

    /// The peer's address, when the server knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The subprotocols the client offered, in its order.
    pub fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The authenticated user, if an authentication hook set one.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Sets the authenticated user (authentication hooks call this).
    pub fn set_user(&mut self, user: impl Into<String>) {
        self.user = Some(user.into());
    }

    /// Typed application data (a session, a user record…).
    pub fn extensions(&self) -> &http::Extensions {
        &self.extensions
    }

    /// Typed application data, mutably.
    pub fn extensions_mut(&mut self) -> &mut http::Extensions {
        &mut self.extensions
    }
}

/// A header value as text, where [`HeaderValue::to_str`] would give it: visible ASCII and tabs.
fn header_text(value: &[u8]) -> Option<&str> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        std::str::from_utf8(value).ok()
    } else {
        None
    }
}

/// A scope's headers. A `HeaderMap` costs about 100 bytes per header (its entry, plus an
/// allocation per value) for the whole life of a connection, which a consumer mostly reads once,
/// at `connect`; so the scope keeps them as one block and makes the map only when asked.
#[derive(Default)]
struct Headers {
    /// Each header as `[name length][value length][name][value]`, the lengths as `u32`, little
    /// endian; names lower-case, as `http` keeps them. Emptied when the map is changed.
    block: Box<[u8]>,
    /// The map, once asked for. Once it is set, it is the headers.
    map: OnceLock<Box<HeaderMap>>,
}

impl Headers {
    /// The headers of `map`, in its order, in one block.
    fn from_map(map: &HeaderMap) -> Headers {
        let len = map
            .iter()
            .map(|(n, v)| 8 + n.as_str().len() + v.len())
            .sum();
        let mut block = Vec::with_capacity(len);
        for (name, value) in map {
            push_pair(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
        Headers {
            block: block.into_boxed_slice(),
            map: OnceLock::new(),
        }
    }

    /// Adds one header at the end.
    fn append(&mut self, name: &HeaderName, value: &HeaderValue) {
        if let Some(map) = self.map.get_mut() {
            map.append(name.clone(), value.clone());
            return;
        }
        let mut block = std::mem::take(&mut self.block).into_vec();
        push_pair(&mut block, name.as_str().as_bytes(), value.as_bytes());
        self.block = block.into_boxed_slice();
    }

    /// Each header's name and value, in order.
    fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let map = self.map.get();
        let from_map = map
            .into_iter()
            .flat_map(|m| m.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())));
        let from_block = map.is_none().then_some(Pairs(&self.block));
        from_map.chain(from_block.into_iter().flatten())
    }

    /// The block as a map; `Authorization`, `Proxy-Authorization` and `Cookie` values are marked
    /// sensitive (kept out of `Debug` output).
    fn decode(&self) -> HeaderMap {
        let pairs = Pairs(&self.block);
        let mut map = HeaderMap::with_capacity(pairs.clone().count());
        for (name, value) in pairs {
            // Both were a valid name and value when they were stored.
            let (Ok(name), Ok(mut value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            else {
                continue;
            };
            value.set_sensitive(matches!(
                name,
                header::AUTHORIZATION | header::PROXY_AUTHORIZATION | header::COOKIE
            ));
            map.append(name, value);
        }
        map
    }

    fn map(&self) -> &HeaderMap {
        self.map.get_or_init(|| Box::new(self.decode()))
    }

    fn map_mut(&mut self) -> &mut HeaderMap {
        self.map();
        self.block = Box::default();
        match self.map.get_mut() {
            Some(map) => map,
            // ok: set by `map()` just above.
            None => unreachable!("the header map was just made"),
        }
    }
}

fn push_pair(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // `http` takes no header name or value near 4 GiB; one that did not fit is left out.
    let (Ok(n), Ok(v)) = (u32::try_from(name.len()), u32::try_from(value.len())) else {
        return;
    };
    block.extend_from_slice(&n.to_le_bytes());
    block.extend_from_slice(&v.to_le_bytes());
    block.extend_from_slice(name);
    block.extend_from_slice(value);
}

/// The pairs of a header block.
#[derive(Clone)]
struct Pairs<'a>(&'a [u8]);

impl<'a> Iterator for Pairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (n, rest) = self.0.split_first_chunk::<4>()?;
        let (v, rest) = rest.split_first_chunk::<4>()?;
        let n = usize::try_from(u32::from_le_bytes(*n)).ok()?;
        let v = usize::try_from(u32::from_le_bytes(*v)).ok()?;
        let (name, rest) = rest.split_at_checked(n)?;
        let (value, rest) = rest.split_at_checked(v)?;
        self.0 = rest;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_cookies_params() {
        let s = Scope::new("/ws/chat/lobby/?nickname=ann%20b&x=1")
            .with_param("room", "lobby")
            .with_header("cookie", "sessionid=abc; theme=dark")
            .with_header("sec-websocket-protocol", "chat, json");
        assert_eq!(s.path(), "/ws/chat/lobby/");
        assert_eq!(s.param("room"), Some("lobby"));
        assert_eq!(s.query("nickname").as_deref(), Some("ann b"));
        assert_eq!(s.query("none"), None);
        assert_eq!(s.cookie("theme").as_deref(), Some("dark"));
        assert_eq!(s.cookie("sessionid").as_deref(), Some("abc"));
        let mut s = s;
        s.headers_mut().remove("cookie");
        assert_eq!(s.cookie("theme"), None);
        let s2 = Scope::from_parts("/".into(), String::new(), vec![], s.headers(), None);
        assert_eq!(s2.subprotocols(), ["chat", "json"]);
    }

    /// A scope's headers as the handshake leaves them: from a map, into the block.
    fn handshake_scope() -> Scope {
        let mut map = HeaderMap::new();
        map.append("host", HeaderValue::from_static("127.0.0.1:8000"));
        map.append("cookie", HeaderValue::from_static("sessionid=abc"));
        map.append("x-tag", HeaderValue::from_static("one"));
        map.append("cookie", HeaderValue::from_static("theme=dark"));
        let cafe = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(); // ok: a unit test's fixed, valid value
        map.append("x-tag", cafe);
        map.append("x-tag", HeaderValue::from_static("three"));
        map.append("authorization", HeaderValue::from_static("Bearer t0ken"));
        Scope::from_parts("/".into(), String::new(), vec![], &map, None)
    }

    #[test]
    fn headers_read_from_the_block_without_a_map() {
        let s = handshake_scope();
        assert_eq!(s.header("HOST"), Some("127.0.0.1:8000"));
        assert_eq!(s.header("x-tag"), Some("one"));
        // Not visible ASCII: skipped, as `HeaderValue::to_str` would refuse it.
        assert_eq!(s.header_all("X-Tag").collect::<Vec<_>>(), ["one", "three"]);
        assert_eq!(s.cookie("theme").as_deref(), Some("dark"));
        assert_eq!(s.cookie("sessionid").as_deref(), Some("abc"));
        assert_eq!(s.header("none"), None);
        assert!(s.headers.map.get().is_none(), "reading made a map");
        let fresh = s.to_header_map();
        assert!(s.headers.map.get().is_none(), "to_header_map kept its map");
        assert_eq!(fresh.len(), 7);
        assert_eq!(fresh.get_all("x-tag").iter().count(), 3);
        assert_eq!(
            fresh.get_all("x-tag").iter().nth(1).map(|v| v.as_bytes()),
            Some(&b"caf\xc3\xa9"[..])
        );
    }

    #[test]
    fn the_map_is_the_same_headers_and_marks_secrets() {
        let s = handshake_scope();
        let map = s.headers();
        assert_eq!(map.len(), 7);
        let tags: Vec<&[u8]> = map.get_all("x-tag").iter().map(|v| v.as_bytes()).collect();
        assert_eq!(tags, [&b"one"[..], b"caf\xc3\xa9", b"three"]);
        assert!(map["authorization"].is_sensitive());
        assert!(map.get_all("cookie").iter().all(|v| v.is_sensitive()));
        assert!(!map["host"].is_sensitive());
        assert!(!format!("{map:?}").contains("t0ken"));
        // Kept: the same map the next time.
        assert!(std::ptr::eq(s.headers(), map));
        assert_eq!(s.header("x-tag"), Some("one"));
    }

    #[test]
    fn changed_headers_are_what_every_reader_sees() {
        let mut s = handshake_scope();
        s.headers_mut().remove("cookie");
        s.headers_mut()
            .insert("x-new", HeaderValue::from_static("yes"));
        assert!(s.headers.block.is_empty(), "the block outlived the change");
        assert_eq!(s.cookie("theme"), None);
        assert_eq!(s.header("x-new"), Some("yes"));
        assert_eq!(s.to_header_map().len(), 6);
        let s = s.with_header("x-later", "1");
        assert_eq!(s.header("x-later"), Some("1"));
        assert_eq!(s.headers().len(), 7);
        // A scope built by hand appends to its block.
        let t = Scope::new("/").with_header("A", "1").with_header("a", "2");
        assert_eq!(t.header_all("a").collect::<Vec<_>>(), ["1", "2"]);
        assert!(t.headers.map.get().is_none());
        assert_eq!(t.headers().get_all("a").iter().count(), 2);
    }
}
