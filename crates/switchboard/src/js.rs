//! `switchboard.js`: the browser client, a plain ES module with no build step — handlers by
//! message type, reconnect with exponential back-off and jitter, and resume from the last
//! [`Position`](crate::Position) it saw (`since=` on the reconnect URL, for a consumer that
//! joins with [`Connection::group_add_since`](crate::Connection::group_add_since)). Serve
//! [`SOURCE`] from your app, e.g. with axum:
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::{Router, routing::get};
//! let app: Router = Router::new().route("/switchboard.js", get(|| async { switchboard::js::response() }));
//! # }
//! ```
//!
//! and in the page:
//!
//! ```text
//! <script type="module">
//! import { Switchboard } from "/switchboard.js";
//! const sb = new Switchboard("/ws/chat/lobby/", { params: { nickname: "ann" }, welcome: "chat.joined" });
//! sb.on("chat.message", (m) => show(m));
//! sb.on("chat.joined", (m) => { if (!m.recovered) reload(); });
//! sb.send({ message: "hi" });
//! </script>
//! ```

/// The module's source.
pub const SOURCE: &str = include_str!("../js/switchboard.js");

/// The module as an HTTP response (`text/javascript`, cached for an hour).
#[cfg(feature = "axum")]
pub fn response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/javascript; charset=utf-8",
            ),
            (axum::http::header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        SOURCE,
    )
        .into_response()
}
