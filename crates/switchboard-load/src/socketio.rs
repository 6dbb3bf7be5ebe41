//! The few Engine.IO v4 / Socket.IO v5 frames a chat client needs, over WebSocket text frames
//! (`/socket.io/?EIO=4&transport=websocket`): the server's open packet `0{…}`, the client's
//! namespace connect `40`, the server's `40{"sid":…}`, ping `2` / pong `3`, and events
//! `42["name",DATA]` both ways (namespace `/`, no acks, no binary attachments).

/// A frame the server sent, as far as a chat client cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// `0{…}`: the Engine.IO handshake (sid, ping interval, …).
    Open,
    /// `2`: a ping; answer [`PONG`].
    Ping,
    /// `40…`: connected to the namespace.
    Connected,
    /// `44…`: the namespace refused the connection (the text after `44`).
    ConnectError(&'a str),
    /// `1` or `41`: the session or the namespace closed.
    Closed,
    /// `42["name",DATA]` (an ack id after `42` is skipped): the event's name and its data's JSON.
    Event {
        /// The event name.
        name: &'a str,
        /// The JSON of the first argument, as it came.
        data: &'a str,
    },
    /// Anything else (pongs, acks, other namespaces).
    Other,
}

/// The client's connect to namespace `/`, without auth.
pub(crate) const CONNECT: &str = "40";

/// The answer to a ping.
pub(crate) const PONG: &str = "3";

/// Parses one WebSocket text frame.
pub(crate) fn parse(frame: &str) -> Frame<'_> {
    let mut chars = frame.chars();
    match chars.next() {
        Some('0') => return Frame::Open,
        Some('1') => return Frame::Closed,
        Some('2') => return Frame::Ping,
        Some('4') => {}
        _ => return Frame::Other,
    }
    let packet = &frame[1..];
    match packet.as_bytes().first() {
        Some(b'0') => Frame::Connected,
        Some(b'1') => Frame::Closed,
        Some(b'4') => Frame::ConnectError(&packet[1..]),
        Some(b'2') => parse_event(&packet[1..]).unwrap_or(Frame::Other),
        _ => Frame::Other,
    }
}

/// `["name",DATA]`, after an optional ack id.
fn parse_event(rest: &str) -> Option<Frame<'_>> {
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix('[')?.strip_suffix(']')?;
    let rest = rest.strip_prefix('"')?;
    // Event names here have no escapes; a name with a quote in it is not one of ours.
    let (name, rest) = rest.split_once('"')?;
    if name.contains('\\') {
        return None;
    }
    let data = rest.trim_start().strip_prefix(',')?.trim();
    Some(Frame::Event { name, data })
}

/// `42["name",DATA]`: event `name` with `data` (JSON) as its one argument.
pub(crate) fn event(name: &str, data: &str) -> String {
    let mut s = String::with_capacity(name.len() + data.len() + 8);
    s.push_str("42[\"");
    s.push_str(name);
    s.push_str("\",");
    s.push_str(data);
    s.push(']');
    s
}

#[cfg(test)]
mod tests {
    use super::{Frame, event, parse};

    #[test]
    fn parses_the_handshake() {
        let open = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(parse(open), Frame::Open);
        assert_eq!(
            parse(r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#),
            Frame::Connected
        );
        assert_eq!(parse("40"), Frame::Connected);
        assert_eq!(
            parse(r#"44{"message":"Not authorized"}"#),
            Frame::ConnectError(r#"{"message":"Not authorized"}"#)
        );
        assert_eq!(parse("2"), Frame::Ping);
        assert_eq!(parse("3"), Frame::Other);
        assert_eq!(parse("41"), Frame::Closed);
        assert_eq!(parse("1"), Frame::Closed);
        assert_eq!(parse(""), Frame::Other);
    }

    #[test]
    fn parses_events() {
        let frame = r#"42["chat.message",{"type":"chat.message","room":"bench","user":"c1","message":"3 0 99 xx"}]"#;
        assert_eq!(
            parse(frame),
            Frame::Event {
                name: "chat.message",
                data: r#"{"type":"chat.message","room":"bench","user":"c1","message":"3 0 99 xx"}"#,
            }
        );
        // An ack id between the type and the array is skipped.
        assert_eq!(
            parse(r#"4212["message", {"message":"hi"}]"#),
            Frame::Event {
                name: "message",
                data: r#"{"message":"hi"}"#
            }
        );
        // No data, no closing bracket, not an array: not events.
        assert_eq!(parse(r#"42["ping"]"#), Frame::Other);
        assert_eq!(parse(r#"42["chat.message",{}"#), Frame::Other);
        assert_eq!(parse(r#"42{"a":1}"#), Frame::Other);
    }

    #[test]
    fn encodes_events_the_parser_reads_back() {
        let data = r#"{"message":"7 1 123 pad"}"#;
        let frame = event("message", data);
        assert_eq!(frame, r#"42["message",{"message":"7 1 123 pad"}]"#);
        assert_eq!(
            parse(&frame),
            Frame::Event {
                name: "message",
                data
            }
        );
    }
}
