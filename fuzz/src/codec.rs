//! The channels_redis codec: msgpack maps with a random prefix, optionally Fernet-encrypted.

use std::sync::OnceLock;

use switchboard_redis::fuzzing::Codec;

use crate::same_message;

struct Codecs {
    core: Codec,
    pubsub: Codec,
    core_sealed: Codec,
    pubsub_sealed: Codec,
    /// A newer key first, then the old one: what decrypts during a rotation.
    core_rotated: Codec,
    pubsub_rotated: Codec,
    core_other: Codec,
}

fn codecs() -> &'static Codecs {
    static CODECS: OnceLock<Codecs> = OnceLock::new();
    CODECS.get_or_init(|| {
        let old = vec![b"fuzz-old-key".to_vec()];
        let rotated = vec![b"fuzz-new-key".to_vec(), b"fuzz-old-key".to_vec()];
        Codecs {
            core: Codec::core(&[], 60),
            pubsub: Codec::pubsub(&[]),
            core_sealed: Codec::core(&old, 60),
            pubsub_sealed: Codec::pubsub(&old),
            core_rotated: Codec::core(&rotated, 60),
            pubsub_rotated: Codec::pubsub(&rotated),
            core_other: Codec::core(&[b"fuzz-other-key".to_vec()], 60),
        }
    })
}

/// The first byte picks the codec (the core layer's, with its 12-byte prefix, or pub/sub's;
/// plain or encrypted), the rest are the stored bytes. Decoding never panics; what decodes
/// encodes and decodes back to the same message and route; the same message sealed with a
/// key opens with a rotated key list that still has it, and not without a key or with
/// another one.
pub fn redis_codec(data: &[u8]) {
    let Some((&mode, stored)) = data.split_first() else {
        return;
    };
    let c = codecs();
    let core = mode & 1 == 0;
    let (plain, sealed, rotated) = if core {
        (&c.core, &c.core_sealed, &c.core_rotated)
    } else {
        (&c.pubsub, &c.pubsub_sealed, &c.pubsub_rotated)
    };
    if mode & 2 != 0 {
        // Arbitrary bytes as a Fernet token: an error, never a panic (a forged token cannot
        // pass the HMAC, so nothing decodes).
        let _ = sealed.decode(stored);
        let _ = rotated.decode(stored);
        return;
    }
    let Ok((message, route)) = plain.decode(stored) else {
        return;
    };
    assert!(
        message
            .get(switchboard_core::message::RESERVED_KEY)
            .is_none()
    );
    let check = |codec: &Codec, bytes: &[u8], what: &str| {
        let (m, r) = codec
            .decode(bytes)
            .unwrap_or_else(|e| panic!("{what}: {message:?} {route:?} does not decode: {e}"));
        assert!(
            same_message(&m, &message),
            "{what}: {message:?} came back as {m:?}"
        );
        assert_eq!(r, route, "{what}: the route changed");
    };
    let bytes = plain
        .encode(&message, &route)
        .unwrap_or_else(|e| panic!("{message:?} {route:?} does not encode: {e}"));
    check(plain, &bytes, "plain");
    if mode & 4 != 0 {
        return;
    }
    let token = sealed
        .encode(&message, &route)
        .unwrap_or_else(|e| panic!("{message:?} {route:?} does not encrypt: {e}"));
    check(sealed, &token, "sealed");
    check(rotated, &token, "rotated");
    assert!(
        plain.decode(&token).is_err(),
        "a token decoded without a key"
    );
    if core {
        assert!(
            c.core_other.decode(&token).is_err(),
            "a token decoded with another key"
        );
    }
}
