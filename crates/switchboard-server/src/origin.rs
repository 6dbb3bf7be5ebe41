//! Which browser origins may open a WebSocket: Channels' `OriginValidator`, and the same rules
//! for CORS on your own HTTP routes.

/// Which `Origin` headers a WebSocket endpoint accepts, as Channels' `OriginValidator`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// The origin's host (and port) must equal the request's `Host` — same-origin pages only.
    SameHost,
    /// Any origin.
    Any,
    /// Origins matching one of these patterns: `"*"` (any), `"example.com"` (that host),
    /// `".example.com"` (it and every subdomain), `"https://example.com:8443"` (scheme, host and
    /// port as given).
    List(Vec<String>),
}

/// The origin check: a policy plus whether a request without `Origin` (a non-browser client)
/// is let in.
#[derive(Clone, Debug)]
pub(crate) struct OriginCheck {
    pub(crate) origins: Origins,
    pub(crate) allow_missing: bool,
}

impl Origins {
    /// Whether this policy allows the `Origin` header value `origin` on a request for `host`
    /// (the request's `Host` header, used by [`Origins::SameHost`]). The same rules the
    /// WebSocket handshake applies; HTTP endpoints use it for CORS.
    ///
    /// ```
    /// use switchboard::Origins;
    /// let o = Origins::List(vec![".example.com".into()]);
    /// assert!(o.allows("https://app.example.com", None));
    /// assert!(!o.allows("https://evil.com", None));
    /// assert!(Origins::SameHost.allows("http://127.0.0.1:8000", Some("127.0.0.1:8000")));
    /// ```
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let Some((scheme, o_host, o_port)) = parse_origin(origin) else {
            return *self == Origins::Any
                || matches!(self, Origins::List(l) if l.iter().any(|p| p == "*"));
        };
        match self {
            Origins::Any => true,
            // The Host header is read as the origin's authority is, by the same parser.
            Origins::SameHost => host
                .and_then(|h| h.parse::<http::uri::Authority>().ok())
                .is_some_and(|h| {
                    strip_brackets(h.host()).eq_ignore_ascii_case(&o_host)
                        && h.port_u16().or(default_port(&scheme))
                            == o_port.or(default_port(&scheme))
                }),
            Origins::List(patterns) => patterns
                .iter()
                .any(|p| origin_matches(p, &scheme, &o_host, o_port)),
        }
    }
}

impl OriginCheck {
    pub(crate) fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing,
            Some(origin) => self.origins.allows(origin, host),
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn split_host_port(s: &str) -> (&str, Option<u16>) {
    // [v6]:port, host:port, host
    if let Some(rest) = s.strip_prefix('[')
        && let Some((h, after)) = rest.split_once(']')
    {
        return (h, after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (s, None),
    }
}

/// An IPv6 literal's host without its brackets. They come off only as a pair:
/// `http://evil.com]` is not `evil.com`.
fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let uri: http::Uri = origin.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = strip_brackets(uri.host()?).to_ascii_lowercase();
    Some((scheme, host, uri.port_u16()))
}

fn origin_matches(pattern: &str, scheme: &str, host: &str, port: Option<u16>) -> bool {
    if pattern == "*" {
        return true;
    }
    if pattern.contains("://") {
        let Some((p_scheme, p_host, p_port)) = parse_origin(pattern) else {
            return false;
        };
        return p_scheme == scheme
            && host_matches(&p_host, host)
            && p_port.or(default_port(&p_scheme)) == port.or(default_port(scheme));
    }
    let (p_host, p_port) = split_host_port(pattern);
    host_matches(&p_host.to_ascii_lowercase(), host)
        && p_port.is_none_or(|p| Some(p) == port.or(default_port(scheme)))
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('.') {
        Some(domain) => host == domain || host.ends_with(pattern),
        None => host == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(origins: Origins, allow_missing: bool) -> OriginCheck {
        OriginCheck {
            origins,
            allow_missing,
        }
    }

    #[test]
    fn same_host() {
        let c = check(Origins::SameHost, false);
        assert!(c.allows(Some("http://127.0.0.1:8000"), Some("127.0.0.1:8000")));
        assert!(c.allows(Some("https://example.com"), Some("example.com")));
        assert!(c.allows(Some("http://example.com"), Some("example.com:80")));
        assert!(!c.allows(Some("http://evil.com:8000"), Some("127.0.0.1:8000")));
        assert!(!c.allows(Some("http://127.0.0.1:9000"), Some("127.0.0.1:8000")));
        assert!(!c.allows(None, Some("127.0.0.1:8000")));
        assert!(!c.allows(Some("null"), Some("127.0.0.1:8000")));
        assert!(check(Origins::SameHost, true).allows(None, Some("x")));
    }

    #[test]
    fn patterns() {
        let c = check(
            Origins::List(vec![
                ".example.com".into(),
                "chat.io".into(),
                "https://secure.org:8443".into(),
            ]),
            false,
        );
        assert!(c.allows(Some("https://example.com"), None));
        assert!(c.allows(Some("https://a.b.example.com"), None));
        assert!(!c.allows(Some("https://badexample.com"), None));
        assert!(c.allows(Some("http://chat.io:3000"), None));
        assert!(!c.allows(Some("http://sub.chat.io"), None));
        assert!(c.allows(Some("https://secure.org:8443"), None));
        assert!(!c.allows(Some("http://secure.org:8443"), None));
        assert!(!c.allows(Some("https://secure.org"), None));
        assert!(!c.allows(None, None));
        assert!(check(Origins::List(vec!["*".into()]), false).allows(Some("null"), None));
        assert!(
            check(Origins::List(vec!["localhost:8000".into()]), false)
                .allows(Some("http://localhost:8000"), None)
        );
        assert!(
            !check(Origins::List(vec!["localhost:8000".into()]), false)
                .allows(Some("http://localhost:9000"), None)
        );
    }

    /// Found by the `origin` fuzz target: a host with a stray `]` (which `http::Uri` takes) lost
    /// it, so `http://![]` was not on host `![]`, and `http://example.com]` passed as
    /// `example.com`; and the Host header was split by other rules than the origin.
    #[test]
    fn brackets_come_off_only_as_a_pair() {
        assert!(Origins::SameHost.allows("HTTP://![]", Some("![]")));
        let list = Origins::List(vec!["example.com".into()]);
        assert!(!list.allows("http://example.com]", None));
        assert!(!list.allows("http://[example.com", None));
        assert!(Origins::SameHost.allows("http://[::1]:8000", Some("[::1]:8000")));
        assert!(Origins::List(vec!["[::1]".into()]).allows("http://[::1]", None));
        // The Host header is parsed as the origin's authority is (`[]!` is a host to
        // `http::Uri`, not an IPv6 literal followed by junk).
        assert!(Origins::SameHost.allows("HTTP://[]!:0", Some("[]!:0")));
        assert!(!Origins::SameHost.allows("http://[::1]:80", Some("[::2]:80")));
        assert!(!Origins::SameHost.allows("http://a.test", Some("a.test:8080")));
    }
}
