//! The scope of a connection: what the handshake told us about it.
//!
//! As Channels' `scope` dict: the path and its route parameters, the query string, the headers,
//! cookies, the peer address, the subprotocols the client offered, and the user an
//! authentication hook set. Extensions carry any typed data of the application's.

use std::fmt;
use std::net::SocketAddr;

use http::HeaderMap;

/// The scope of one connection.
#[derive(Default)]
pub struct Scope {
    path: String,
    params: Vec<(String, String)>,
    query: String,
    headers: HeaderMap,
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
        if let (Ok(n), Ok(v)) = (
            http::header::HeaderName::try_from(name),
            http::header::HeaderValue::try_from(value),
        ) {
            self.headers.append(n, v);
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
        headers: HeaderMap,
        peer: Option<SocketAddr>,
    ) -> Scope {
        let subprotocols = headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
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
            headers,
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

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request headers, mutably. A consumer that no longer needs them after `connect` may
    /// drop them (`*conn.scope_mut().headers_mut() = HeaderMap::new()`) to keep an idle
    /// connection small.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// One header as text, if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
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
        let s2 = Scope::from_parts("/".into(), String::new(), vec![], s.headers().clone(), None);
        assert_eq!(s2.subprotocols(), ["chat", "json"]);
    }
}
