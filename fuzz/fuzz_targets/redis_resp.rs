//! Bytes as the Redis session reads them, both ways, with small limits:
//! client commands (RESP arrays and inline commands) as the client loop
//! decodes them, and server replies (RESP2 and RESP3) as the server loop
//! does, each reply then masked as the proxy would mask it.
//!
//! Checked: nothing panics; a decoded command re-encodes to a RESP array
//! that decodes to the same command, and its key positions are in range; a
//! decoded reply re-encodes to bytes that decode to the same value; a masked
//! reply is still exactly one valid value; an incomplete input consumes
//! nothing.
#![no_main]

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use interceptor::{
    audit::hostkey::HostKey,
    config::{MaskConfig, MaskStrategy},
    protocol::redis::{
        masking::{KeyMasks, Plan},
        Command, Decoder, Keys, Limits,
    },
};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_bulk: 4096,
    max_elements: 64,
    max_depth: 8,
    max_inline: 1024,
};

fn masks() -> &'static KeyMasks {
    static MASKS: OnceLock<KeyMasks> = OnceLock::new();
    MASKS.get_or_init(|| {
        // One host key for every run (a fresh directory per process would
        // pile up under /tmp).
        let dir = std::env::temp_dir().join("interceptor-fuzz-redis-hostkey");
        let _ = std::fs::create_dir_all(&dir);
        let key = HostKey::load_or_create(&dir).expect("host key");
        let m =
            |name: &str, keys: Option<Vec<String>>, detectors: Option<Vec<String>>, strategy| {
                MaskConfig {
                    name: name.into(),
                    stores: None,
                    columns: None,
                    keys,
                    json: None,
                    detectors,
                    strategy,
                }
            };
        KeyMasks::new(
            "redis",
            &[
                m(
                    "keys",
                    Some(vec!["secret:*".into(), "k".into()]),
                    None,
                    MaskStrategy::Partial,
                ),
                m(
                    "detectors",
                    None,
                    Some(
                        [
                            "aws_access_key_id",
                            "private_key",
                            "github_token",
                            "jwt",
                            "password_in_url",
                        ]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                    ),
                    MaskStrategy::Hash,
                ),
            ],
            key,
        )
        .expect("masks")
    })
}

fn cmd(words: &[&str]) -> Command {
    Command {
        args: words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect(),
    }
}

fuzz_target!(|data: &[u8]| {
    let masks = masks();
    // Client -> server.
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decoder.decode_command_raw(&mut buf) {
            Ok(Some((c, raw))) => {
                assert!(!c.args.is_empty());
                if let Some(raw) = &raw {
                    // Blank lines and empty arrays before it are skipped.
                    assert!(raw.len() <= before - buf.len());
                    let mut again = BytesMut::from(&raw[..]);
                    let back = Decoder::new(LIMITS)
                        .decode_command(&mut again)
                        .expect("the command's own bytes decode")
                        .expect("complete");
                    assert_eq!(back, c);
                    assert!(again.is_empty());
                }
                let wire = c.encode();
                let mut again = BytesMut::from(&wire[..]);
                let back = Decoder::new(Limits::default())
                    .decode_command(&mut again)
                    .expect("re-encoded command decodes")
                    .expect("complete");
                assert_eq!(back, c);
                assert!(again.is_empty());
                let keys = c.key_positions();
                if let Keys::At(p) = &keys {
                    assert!(p.iter().all(|&i| i > 0 && i < c.args.len()));
                }
                let _ = (c.full_name(), c.is("GET"));
                let _ = masks.plan(&c, &keys);
            }
            Ok(None) => break,
            Err(e) => {
                let reply = e.to_error_reply();
                assert!(reply.starts_with(b"-") && reply.ends_with(b"\r\n"));
                assert_eq!(reply.iter().filter(|&&b| b == b'\n').count(), 1);
                break;
            }
        }
    }

    // Server -> client, masked under a few plans.
    let plans = [
        Plan::None,
        masks
            .plan(&cmd(&["GET", "k"]), &Keys::At(vec![1]))
            .unwrap_or_default(),
        masks
            .plan(
                &cmd(&["MGET", "a", "k", "secret:x"]),
                &Keys::At(vec![1, 2, 3]),
            )
            .unwrap_or_default(),
        masks
            .plan(&cmd(&["HGETALL", "k"]), &Keys::At(vec![1]))
            .unwrap_or_default(),
        masks
            .plan(
                &cmd(&["ZRANGE", "k", "0", "-1", "WITHSCORES"]),
                &Keys::At(vec![1]),
            )
            .unwrap_or_default(),
        masks
            .plan(&cmd(&["XRANGE", "k", "-", "+"]), &Keys::At(vec![1]))
            .unwrap_or_default(),
        masks
            .plan(
                &cmd(&["XREAD", "STREAMS", "a", "k", "0", "0"]),
                &Keys::At(vec![2, 3]),
            )
            .unwrap_or_default(),
        masks
            .plan(&cmd(&["HSCAN", "k", "0"]), &Keys::At(vec![1]))
            .unwrap_or_default(),
    ];
    let mut decoder = Decoder::new(LIMITS);
    let mut buf = BytesMut::from(data);
    let mut i = 0usize;
    loop {
        let snapshot = buf.clone();
        match decoder.decode_raw(&mut buf) {
            Ok(Some((value, raw))) => {
                assert_eq!(raw.len(), snapshot.len() - buf.len());
                let wire = value.to_bytes();
                let mut again = BytesMut::from(&wire[..]);
                let back = Decoder::new(Limits::default())
                    .decode(&mut again)
                    .expect("re-encoded value decodes")
                    .expect("complete");
                assert_eq!(back, value);
                assert!(again.is_empty());
                let plan = &plans[i % plans.len()];
                let exec = Plan::Exec(plans.to_vec());
                for p in [plan, &exec] {
                    let mut masked = value.clone();
                    let n = masks.apply(p, &mut masked);
                    let wire = masked.to_bytes();
                    let mut again = BytesMut::from(&wire[..]);
                    let back = Decoder::new(Limits::default())
                        .decode(&mut again)
                        .expect("masked value decodes")
                        .expect("complete");
                    assert!(again.is_empty());
                    if n == 0 {
                        assert_eq!(back, value);
                    }
                }
                i += 1;
            }
            Ok(None) => {
                assert_eq!(buf, snapshot, "an incomplete value was consumed");
                break;
            }
            Err(_) => break,
        }
    }
});
