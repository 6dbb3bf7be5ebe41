//! Seed inputs for each target: small, valid examples for the fuzzer to start from (libFuzzer
//! reaches a WebSocket handshake from nothing only slowly). `cargo test` runs every target on
//! them, and `scripts/fuzz` writes them into each target's corpus before a run.

use crate::http::UPGRADE;

fn upgrade(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: keep-alive, Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A masked client frame (RFC 6455): FIN, `opcode`, the payload masked with a fixed key.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The seeds of `target` (a name from [`TARGETS`](crate::TARGETS)); none for an unknown one.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let b = |s: &str| s.as_bytes().to_vec();
    match target {
        "json_message" => vec![
            b(r#"{"type":"chat.message","text":"hi","tags":["a","b"],"room":7}"#),
            b(r#"{"type":"chat.join","user":["ann",-3],"extra":{"x":1.5e300,"y":null}}"#),
            b(r#"{"type":"blob","data":[0,1,255],"score":-0.0,"flag":true}"#),
            b(r#"{"type":"x","u":18446744073709551615,"i":-9223372036854775808,"f":0.1}"#),
            b(r#"{"type":"x","type":"y","__asgi_channel__":"a!b"}"#),
            b(r#"[{"type":"x"}]"#),
        ],
        "msgpack_value" | "redis_codec" => {
            // msgpack.packb({"type": "all", "i": -42, "u": 2**64-1, "f": 1.5, "b": b"\0\1",
            // "n": None, "t": True, "l": [1, "two"], "m": {"k": "v"}}), from channels_redis'
            // interop tests.
            let all = [
                0x89, 0xa4, b't', b'y', b'p', b'e', 0xa3, b'a', b'l', b'l', 0xa1, b'i', 0xd0, 0xd6,
                0xa1, b'u', 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xa1, b'f', 0xcb,
                0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0xa1, b'b', 0xc4, 0x02, 0x00, 0x01, 0xa1, b'n', 0xc0,
                0xa1, b't', 0xc3, 0xa1, b'l', 0x92, 0x01, 0xa3, b't', b'w', b'o', 0xa1, b'm', 0x81,
                0xa1, b'k', 0xa1, b'v',
            ];
            let routed_one = [
                &[0x82, 0xa4][..],
                b"type",
                &[0xa1, b'x', 0xb0],
                b"__asgi_channel__",
                &[0xa5],
                b"a.b!c",
            ]
            .concat();
            let routed_many = [
                &[0x82, 0xa4][..],
                b"type",
                &[0xa1, b'x', 0xb0],
                b"__asgi_channel__",
                &[0x92, 0xa3],
                b"a!b",
                &[0xa3],
                b"a!c",
            ]
            .concat();
            let f32_nan = [
                &[0x82, 0xa4][..],
                b"type",
                &[0xa1, b'x', 0xa1, b'f', 0xca, 0x7f, 0xc0, 0, 0],
            ]
            .concat();
            if target == "msgpack_value" {
                vec![all.to_vec(), routed_one, routed_many, f32_nan]
            } else {
                // The first byte picks the codec: 0 core (12-byte prefix), 1 pub/sub, +2 a
                // Fernet token, +4 no encryption round trip.
                let prefix = [0u8; 12];
                vec![
                    [&[0][..], &prefix, &all].concat(),
                    [&[1][..], &all].concat(),
                    [&[0][..], &prefix, &routed_one].concat(),
                    [&[1][..], &routed_many].concat(),
                    [&[4][..], &prefix, &f32_nan].concat(),
                    [&[3][..], b"gAAAAABkZ2V0dGluZ3N0YXJ0ZWQ="].concat(),
                ]
            }
        }
        "names" => vec![
            b("specific.6e5706f2d491421f9398739aef024fb7!213f83abed73453dbfd177e5f5f46cec"),
            b("chat_lobby"),
            b("abc!é9_"),
            b("a!b!c"),
            b("!x"),
            "g".repeat(99).into_bytes(),
        ],
        "origin" => vec![
            b("https://app.example.com\nexample.com\n.example.com\nhttps://b.test:8443"),
            b("http://127.0.0.1:8000\n127.0.0.1:8000"),
            b("http://[::1]:80\n[::1]\nhttp://[::1]"),
            b("null\n\n*"),
            b("HTTPS://EXAMPLE.COM:443\nexample.com\nexample.com:443"),
        ],
        "route_params" => vec![
            b("lobby"),
            b("room 1\0hello world"),
            b("a/b/c\0q=1&q=2"),
            b("é%2F+\0+%"),
        ],
        "http_upgrade" => {
            let mut upgraded = UPGRADE.to_vec();
            upgraded.extend(frame(0x1, b"hello"));
            upgraded.extend(frame(0x9, b"ping"));
            upgraded.extend(frame(0x8, &[0x03, 0xe8]));
            vec![
                UPGRADE.to_vec(),
                upgraded,
                [&[0xFF][..], &frame(0x1, b"hi"), &frame(0x2, &[1, 2, 3])].concat(),
                [&[0xFF][..], &frame(0x1, &[b'x'; 300])].concat(),
                upgrade(
                    "/ws/list/a/b?token=abc",
                    "Origin: https://app.example.com\r\nCookie: session=ann; x=y\r\n",
                ),
                upgrade("/ws/list/a", "Origin: https://evil.test\r\n"),
                upgrade(
                    "/ws/route/r%20x/?q=%41",
                    "Sec-WebSocket-Protocol: chat, json\r\n",
                ),
                upgrade("/nowhere", ""),
                b("GET /ws/echo/lobby/ HTTP/1.1\r\nHost: x\r\n\r\n"),
                // Event-stream requests: answered outside hyper (`serve_connection`'s
                // `direct` path).
                b("GET /ws/echo/lobby/ HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"),
                b(
                    "GET /nowhere?x=1 HTTP/1.1\r\nAccept: text/event-stream, */*\r\nLast-Event-ID: 1\r\n\r\n",
                ),
                b("POST /ws/echo/lobby/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"),
                b("GET /ws/echo/lobby/ HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
            ]
        }
        _ => Vec::new(),
    }
}
