//! `Origin` header checks: Channels' `OriginValidator` rules, also used for CORS.

use switchboard_server::Origins;
use switchboard_server::http::Uri;

/// The bytes are lines: the `Origin` value, the `Host` value (absent if the line is empty),
/// then patterns. A list allows what one of its patterns allows; `Any` and `"*"` allow
/// everything; nothing depends on ASCII case; a same-host policy allows an `http(s)`/`ws(s)`
/// origin on a request whose `Host` is that origin's authority.
pub fn origin(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let origin = lines.next().unwrap_or_default(); // ok: split always yields one item
    let host = lines.next().filter(|h| !h.is_empty());
    let patterns: Vec<String> = lines.map(str::to_owned).collect();

    assert!(Origins::Any.allows(origin, host));
    assert!(Origins::List(vec!["*".into()]).allows(origin, host));
    let list = Origins::List(patterns.clone());
    let allowed = list.allows(origin, host);
    let any_one = patterns
        .iter()
        .any(|p| Origins::List(vec![p.clone()]).allows(origin, host));
    assert_eq!(allowed, any_one, "a list is not the union of its patterns");

    let upper = |s: &str| s.to_ascii_uppercase();
    let upper_list = Origins::List(patterns.iter().map(|p| upper(p)).collect());
    let upper_host = host.map(upper);
    assert_eq!(
        allowed,
        upper_list.allows(&upper(origin), upper_host.as_deref()),
        "case changed the answer for {origin:?} on {host:?} with {patterns:?}"
    );
    let same_host = Origins::SameHost.allows(origin, host);
    assert_eq!(
        same_host,
        Origins::SameHost.allows(&upper(origin), upper_host.as_deref()),
        "case changed the same-host answer for {origin:?} on {host:?}"
    );
    assert!(!Origins::SameHost.allows(origin, None));

    if let Ok(uri) = origin.parse::<Uri>()
        && let Some(authority) = uri.authority()
        && !authority.as_str().contains('@')
        && matches!(
            uri.scheme_str().map(str::to_ascii_lowercase).as_deref(),
            Some("http" | "https" | "ws" | "wss")
        )
    {
        assert!(
            Origins::SameHost.allows(origin, Some(authority.as_str())),
            "{origin:?} is not allowed on its own host {authority}"
        );
    }
}
