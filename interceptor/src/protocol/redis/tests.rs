//! Codec tests: every type round trips, values decode the same however they
//! are split, limits are enforced before buffering, and malformed input is
//! an error that says what is wrong, never a panic.

use bytes::{Bytes, BytesMut};

use super::codec::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn bulk(s: &str) -> Value {
    Value::Bulk(Some(b(s)))
}

fn limits() -> Limits {
    Limits::default()
}

/// Decodes exactly one value from `wire`, nothing left over.
fn one(wire: &[u8]) -> Value {
    let mut buf = BytesMut::from(wire);
    let v = decode(&mut buf, &limits())
        .expect("valid value")
        .expect("complete value");
    assert!(buf.is_empty(), "one value, nothing left over");
    v
}

fn err(wire: &[u8]) -> CodecError {
    err_with(wire, &limits())
}

fn err_with(wire: &[u8], limits: &Limits) -> CodecError {
    let mut buf = BytesMut::from(wire);
    match decode(&mut buf, limits) {
        Err(e) => e,
        other => panic!(
            "expected an error for {:?}, got {other:?}",
            String::from_utf8_lossy(wire)
        ),
    }
}

fn malformed(wire: &[u8], needle: &str) {
    let e = err(wire);
    assert!(
        matches!(e, CodecError::Malformed { .. }),
        "{:?}: expected Malformed, got {e}",
        String::from_utf8_lossy(wire)
    );
    let msg = e.to_string();
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
}

fn samples() -> Vec<(Value, &'static str)> {
    vec![
        (Value::Simple(b("OK")), "+OK\r\n"),
        (Value::Simple(b("")), "+\r\n"),
        (
            Value::Error(b("ERR unknown command")),
            "-ERR unknown command\r\n",
        ),
        (Value::Integer(0), ":0\r\n"),
        (Value::Integer(-42), ":-42\r\n"),
        (Value::Integer(i64::MAX), ":9223372036854775807\r\n"),
        (Value::Integer(i64::MIN), ":-9223372036854775808\r\n"),
        (bulk("foo"), "$3\r\nfoo\r\n"),
        (bulk(""), "$0\r\n\r\n"),
        (bulk("a\r\nb"), "$4\r\na\r\nb\r\n"),
        (Value::Bulk(None), "$-1\r\n"),
        (Value::Array(None), "*-1\r\n"),
        (Value::Array(Some(vec![])), "*0\r\n"),
        (
            Value::Array(Some(vec![bulk("GET"), bulk("k"), Value::Integer(1)])),
            "*3\r\n$3\r\nGET\r\n$1\r\nk\r\n:1\r\n",
        ),
        (Value::Null, "_\r\n"),
        (Value::Boolean(true), "#t\r\n"),
        (Value::Boolean(false), "#f\r\n"),
        (Value::Double(b("1.5")), ",1.5\r\n"),
        (Value::Double(b("-inf")), ",-inf\r\n"),
        (Value::Double(b("nan")), ",nan\r\n"),
        (
            Value::BigNumber(b("3492890328409238509324850943850943825024385")),
            "(3492890328409238509324850943850943825024385\r\n",
        ),
        (Value::BigNumber(b("-1")), "(-1\r\n"),
        (
            Value::BulkError(b("SYNTAX invalid")),
            "!14\r\nSYNTAX invalid\r\n",
        ),
        (
            Value::Verbatim(b("txt:Some string")),
            "=15\r\ntxt:Some string\r\n",
        ),
        (
            Value::Map(vec![(Value::Simple(b("first")), Value::Integer(1))]),
            "%1\r\n+first\r\n:1\r\n",
        ),
        (Value::Map(vec![]), "%0\r\n"),
        (
            Value::Set(vec![bulk("a"), Value::Boolean(true)]),
            "~2\r\n$1\r\na\r\n#t\r\n",
        ),
        (
            Value::Attribute(vec![(Value::Simple(b("ttl")), Value::Integer(3600))]),
            "|1\r\n+ttl\r\n:3600\r\n",
        ),
        (
            Value::Push(vec![bulk("message"), bulk("ch"), bulk("hi")]),
            ">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n",
        ),
        (
            Value::Array(Some(vec![
                Value::Map(vec![(
                    bulk("k"),
                    Value::Array(Some(vec![Value::Null, Value::Set(vec![])])),
                )]),
                Value::Array(Some(vec![Value::Array(Some(vec![Value::Integer(7)]))])),
                Value::Bulk(None),
            ])),
            "*3\r\n%1\r\n$1\r\nk\r\n*2\r\n_\r\n~0\r\n*1\r\n*1\r\n:7\r\n$-1\r\n",
        ),
    ]
}

#[test]
fn every_type_round_trips() {
    for (value, wire) in samples() {
        assert_eq!(value.to_bytes(), wire.as_bytes(), "encoding {value:?}");
        assert_eq!(one(wire.as_bytes()), value, "decoding {wire:?}");
    }
}

#[test]
fn decoded_strings_are_slices_of_the_input() {
    let mut buf = BytesMut::from(&b"*2\r\n$5\r\nhello\r\n+OK\r\n"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let v = decode(&mut buf, &limits()).unwrap().unwrap();
    let Value::Array(Some(items)) = v else {
        panic!("array expected")
    };
    for item in items {
        let (Value::Bulk(Some(s)) | Value::Simple(s)) = item else {
            panic!("string expected")
        };
        let p = s.as_ptr() as usize;
        assert!(
            p >= start && p + s.len() <= end,
            "not a slice of the buffer"
        );
    }
}

#[test]
fn split_at_every_boundary_decodes_once_complete() {
    let mut all = Vec::new();
    for (_, wire) in samples() {
        all.extend_from_slice(wire.as_bytes());
    }
    let expected: Vec<Value> = samples().into_iter().map(|(v, _)| v).collect();

    // Each sample alone, fed through the stateless function at every split.
    for (value, wire) in samples() {
        let wire = wire.as_bytes();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(
                decode(&mut buf, &limits()).unwrap(),
                None,
                "cut {cut} of {wire:?}"
            );
            assert_eq!(&buf[..], &wire[..cut], "buffer untouched while incomplete");
            buf.extend_from_slice(&wire[cut..]);
            assert_eq!(decode(&mut buf, &limits()).unwrap(), Some(value.clone()));
            assert!(buf.is_empty());
        }
    }

    // The whole stream, one byte at a time, through one resumable decoder.
    let mut dec = Decoder::new(limits());
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &all {
        buf.extend_from_slice(&[byte]);
        let before = buf.clone();
        match dec.decode(&mut buf).unwrap() {
            Some(v) => got.push(v),
            None => assert_eq!(buf, before, "buffer untouched while incomplete"),
        }
    }
    assert_eq!(got, expected);
    assert!(buf.is_empty());

    // And in chunks of every size from 2 to 17.
    for chunk in 2..18 {
        let mut dec = Decoder::new(limits());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for piece in all.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(v) = dec.decode(&mut buf).unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, expected, "chunk size {chunk}");
    }
}

#[test]
fn huge_array_one_byte_at_a_time_is_linear() {
    const N: usize = 100_000;
    let items: Vec<Value> = (0..N).map(|i| bulk(&i.to_string())).collect();
    let value = Value::Array(Some(items));
    let wire = value.to_bytes();
    let mut dec = Decoder::new(limits());
    let mut buf = BytesMut::with_capacity(wire.len());
    let mut got = None;
    for (i, &byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        if let Some(v) = dec.decode(&mut buf).unwrap() {
            assert_eq!(i, wire.len() - 1, "complete only at the last byte");
            got = Some(v);
        }
    }
    assert_eq!(got, Some(value));

    // The same for a command, and for a big bulk string dripped in.
    let args: Vec<Bytes> = (0..N).map(|i| Bytes::from(i.to_string())).collect();
    let cmd = Command { args };
    let wire = cmd.encode();
    let mut dec = Decoder::new(limits());
    let mut buf = BytesMut::new();
    let mut got = None;
    for &byte in wire.iter() {
        buf.extend_from_slice(&[byte]);
        if let Some(c) = dec.decode_command(&mut buf).unwrap() {
            got = Some(c);
        }
    }
    assert_eq!(got, Some(cmd));

    let big = Value::Bulk(Some(Bytes::from(vec![b'x'; 1_000_000])));
    let wire = big.to_bytes();
    let mut dec = Decoder::new(limits());
    let mut buf = BytesMut::new();
    let mut got = None;
    for &byte in wire.iter() {
        buf.extend_from_slice(&[byte]);
        if let Some(v) = dec.decode(&mut buf).unwrap() {
            got = Some(v);
        }
    }
    assert_eq!(got, Some(big));
}

#[test]
fn pipelined_commands() {
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    for i in 0..1000 {
        let cmd = Command {
            args: vec![
                b("SET"),
                Bytes::from(format!("key:{i}")),
                Bytes::from(vec![b'v'; i % 7]),
            ],
        };
        wire.extend_from_slice(&cmd.encode());
        expected.push(cmd);
    }
    wire.extend_from_slice(b"PING\r\n\r\n*0\r\n*-1\r\n  \r\nGET k\n");
    expected.push(Command {
        args: vec![b("PING")],
    });
    expected.push(Command {
        args: vec![b("GET"), b("k")],
    });
    let mut dec = Decoder::new(limits());
    let mut got = Vec::new();
    while let Some(c) = dec.decode_command(&mut wire).unwrap() {
        got.push(c);
    }
    assert!(wire.is_empty());
    assert_eq!(got, expected);
}

fn inline(line: &str) -> Result<Option<Command>, CodecError> {
    let mut buf = BytesMut::from(line.as_bytes());
    decode_command(&mut buf, &limits())
}

fn inline_args(line: &str) -> Vec<Vec<u8>> {
    inline(line)
        .expect("valid inline command")
        .expect("complete")
        .args
        .iter()
        .map(|a| a.to_vec())
        .collect()
}

#[test]
fn inline_commands() {
    let v = |s: &[&[u8]]| s.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    assert_eq!(inline_args("set a b\r\n"), v(&[b"set", b"a", b"b"]));
    assert_eq!(inline_args("  GET\t key  \n"), v(&[b"GET", b"key"]));
    assert_eq!(
        inline_args("SET k \"hello world\"\r\n"),
        v(&[b"SET", b"k", b"hello world"])
    );
    assert_eq!(
        inline_args("SET k \"a\\x41\\n\\t\\\"\\\\z\"\r\n"),
        v(&[b"SET", b"k", b"aA\n\t\"\\z"])
    );
    assert_eq!(
        inline_args("SET k \"\\xzz\"\r\n"),
        v(&[b"SET", b"k", b"xzz"])
    );
    assert_eq!(
        inline_args("SET k 'it\\'s \"x\"'\r\n"),
        v(&[b"SET", b"k", b"it's \"x\""])
    );
    assert_eq!(
        inline_args("SET k 'a\\nb'\r\n"),
        v(&[b"SET", b"k", b"a\\nb"])
    );
    assert_eq!(inline_args("SET k \"\"\r\n"), v(&[b"SET", b"k", b""]));
    // A quote may open mid-word, as in sdssplitargs.
    assert_eq!(inline_args("SET a\"b c\"\r\n"), v(&[b"SET", b"ab c"]));
    // Incomplete line: nothing consumed.
    let mut buf = BytesMut::from(&b"GET k"[..]);
    assert_eq!(decode_command(&mut buf, &limits()).unwrap(), None);
    assert_eq!(&buf[..], b"GET k");
    // Blank lines alone: consumed, no command.
    let mut buf = BytesMut::from(&b"\r\n\n   \r\n"[..]);
    assert_eq!(decode_command(&mut buf, &limits()).unwrap(), None);
    assert!(buf.is_empty());

    for bad in [
        "SET k \"open\r\n",
        "SET k 'open\r\n",
        "SET k \"a\"b\r\n",
        "SET k 'a'b\r\n",
        "SET k \"trailing\\\r\n",
    ] {
        let e = inline(bad).unwrap_err();
        assert!(e.to_string().contains("unbalanced quotes"), "{bad:?}: {e}");
    }
    let e = inline("GET a\0b\r\n").unwrap_err();
    assert!(e.to_string().contains("NUL"), "{e}");
}

#[test]
fn command_must_be_array_of_bulk_strings() {
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n:1\r\n"[..]);
    let e = decode_command(&mut buf, &limits()).unwrap_err();
    assert!(e.to_string().contains("expected '$'"), "{e}");
    let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$-1\r\n"[..]);
    let e = decode_command(&mut buf, &limits()).unwrap_err();
    assert!(e.to_string().contains("null bulk string"), "{e}");
    let mut buf = BytesMut::from(&b"*1\r\n*1\r\n$1\r\na\r\n"[..]);
    assert!(decode_command(&mut buf, &limits()).is_err());
}

#[test]
fn limits_are_checked_before_buffering() {
    let e = err(b"$1073741824\r\n");
    assert_eq!(
        e,
        CodecError::TooLarge {
            what: "bulk string",
            len: 1_073_741_824,
            max: 536_870_912,
            unit: "bytes"
        }
    );
    assert!(e
        .to_string()
        .contains("RESP bulk string declares 1073741824 bytes, over the limit of 536870912"));

    let small = Limits {
        max_bulk: 10,
        max_elements: 3,
        max_depth: 2,
        max_inline: 16,
    };
    assert!(matches!(
        err_with(b"!11\r\n", &small),
        CodecError::TooLarge { .. }
    ));
    assert!(matches!(
        err_with(b"=11\r\n", &small),
        CodecError::TooLarge { .. }
    ));
    let e = err_with(b"*4\r\n", &small);
    assert!(e.to_string().contains("array declares 4 elements"), "{e}");
    assert!(matches!(
        err_with(b"%4\r\n", &small),
        CodecError::TooLarge { .. }
    ));
    let e = err(b"*99999999\r\n");
    assert!(matches!(e, CodecError::TooLarge { .. }), "{e}");
    // Depth: two levels fine, three refused as soon as the header is in.
    let mut buf = BytesMut::from(&b"*1\r\n*1\r\n:1\r\n"[..]);
    assert!(decode(&mut buf, &small).unwrap().is_some());
    assert_eq!(
        err_with(b"*1\r\n*1\r\n*1\r\n", &small),
        CodecError::TooDeep { depth: 3, max: 2 }
    );
    let deep: String = "*1\r\n".repeat(65) + ":1\r\n";
    assert!(matches!(
        err(deep.as_bytes()),
        CodecError::TooDeep { depth: 65, max: 64 }
    ));
    let ok: String = "*1\r\n".repeat(64) + ":1\r\n";
    assert!(matches!(one(ok.as_bytes()), Value::Array(Some(_))));
    // A line that never ends.
    let e = err_with(b"+aaaaaaaaaaaaaaaaaaaaaaaa", &small);
    assert!(matches!(e, CodecError::TooLarge { .. }), "{e}");
    let e = err_with(b"+aaaaaaaaaaaaaaaaaaaaaaaa\r\n", &small);
    assert!(matches!(e, CodecError::TooLarge { .. }), "{e}");
    // Inline commands.
    let mut buf = BytesMut::from(&b"GET aaaaaaaaaaaaaaaaaaaaaaa"[..]);
    assert!(matches!(
        decode_command(&mut buf, &small),
        Err(CodecError::TooLarge { .. })
    ));
    let mut buf = BytesMut::from(&b"GET aaaaaaaaaaaaaaaaaaaaaaa\r\n"[..]);
    assert!(matches!(
        decode_command(&mut buf, &small),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn malformed_input_is_reported() {
    malformed(b"?foo\r\n", "unknown RESP type byte '?'");
    malformed(b"\x00\r\n", "unknown RESP type byte 0x00");
    malformed(b"$abc\r\nfoo\r\n", "not a decimal number");
    malformed(b"$\r\n\r\n", "not a decimal number");
    malformed(b"$+3\r\nfoo\r\n", "not a decimal number");
    malformed(b"$ 3\r\nfoo\r\n", "not a decimal number");
    malformed(b"$-2\r\n", "only -1 (null) is allowed");
    malformed(b"*-5\r\n", "only -1 (null) is allowed");
    malformed(b"!-1\r\n", "negative");
    malformed(b"%-1\r\n", "negative");
    malformed(b"$99999999999999999999999\r\n", "does not fit");
    malformed(b"$3\r\nfooX\r\n", "not followed by CRLF");
    malformed(b"$3\r\nfo\r\n\r\n", "not followed by CRLF");
    malformed(b"+OK\n", "missing CRLF");
    malformed(b"+OK\rX", "missing CRLF");
    malformed(b":12a\r\n", "not a 64-bit integer");
    malformed(b":9223372036854775808\r\n", "not a 64-bit integer");
    malformed(b":\r\n", "not a 64-bit integer");
    malformed(b"#x\r\n", "expected t or f");
    malformed(b"_x\r\n", "null carries data");
    malformed(b",\r\n", "empty");
    malformed(b"(12x\r\n", "not an integer");
    malformed(b"=3\r\nabc\r\n", "3-character format");
    malformed(b"$?\r\n", "streamed");
    malformed(b"*1\r\n|0\r\n", "attribute inside an aggregate");
    // An error inside an aggregate is found, with its offset.
    malformed(b"*2\r\n:1\r\n$x\r\n", "offset 8");
    // Errors carry a reply for the client.
    let reply = err(b"?\r\n").to_error_reply();
    assert!(reply.starts_with(b"-ERR Protocol error: malformed RESP"));
    assert!(reply.ends_with(b"\r\n"));
}

#[test]
fn attribute_is_its_own_value() {
    let mut buf =
        BytesMut::from(&b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:5\r\n"[..]);
    let first = decode(&mut buf, &limits()).unwrap().unwrap();
    assert!(matches!(first, Value::Attribute(ref m) if m.len() == 1));
    let second = decode(&mut buf, &limits()).unwrap().unwrap();
    assert_eq!(second, Value::Array(Some(vec![Value::Integer(5)])));
    assert!(buf.is_empty());
}

#[test]
fn garbage_never_panics() {
    // Deterministic xorshift so failures reproduce.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let alphabet = b"+-:$*_#,(!=%~|>0123456789\r\n-?abc ";
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let wire: Vec<u8> = (0..len)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect();
        let mut buf = BytesMut::from(&wire[..]);
        let _ = decode(&mut buf, &limits());
        let mut buf = BytesMut::from(&wire[..]);
        let _ = decode_command(&mut buf, &limits());
    }
}

fn cmd(words: &[&str]) -> Command {
    Command {
        args: words.iter().map(|w| b(w)).collect(),
    }
}

#[test]
fn names_and_keys() {
    assert_eq!(cmd(&[]).name(), "");
    assert_eq!(cmd(&[]).full_name(), "");
    assert_eq!(cmd(&["get", "k"]).name(), "GET");
    assert_eq!(cmd(&["config", "set", "x", "y"]).full_name(), "CONFIG SET");
    assert_eq!(cmd(&["Client", "reply", "off"]).full_name(), "CLIENT REPLY");
    assert_eq!(cmd(&["xinfo", "stream", "s"]).full_name(), "XINFO STREAM");
    assert_eq!(cmd(&["acl", "setuser", "u"]).full_name(), "ACL SETUSER");
    assert_eq!(cmd(&["CLUSTER", "nodes"]).full_name(), "CLUSTER NODES");
    assert_eq!(cmd(&["CONFIG"]).full_name(), "CONFIG");
    assert_eq!(cmd(&["set", "k", "v"]).full_name(), "SET");
    let lossy = Command {
        args: vec![Bytes::from_static(b"g\xffet")],
    };
    assert_eq!(lossy.name(), "G\u{fffd}ET");

    assert_eq!(cmd(&["GET", "k"]).keys(), vec![1]);
    assert_eq!(cmd(&["GET"]).keys(), Vec::<usize>::new());
    assert_eq!(cmd(&["set", "k", "v", "EX", "10"]).keys(), vec![1]);
    assert_eq!(cmd(&["MGET", "a", "b", "c"]).keys(), vec![1, 2, 3]);
    assert_eq!(cmd(&["DEL", "a", "b"]).keys(), vec![1, 2]);
    assert_eq!(cmd(&["MSET", "a", "1", "b", "2"]).keys(), vec![1, 3]);
    assert_eq!(cmd(&["RENAME", "a", "b"]).keys(), vec![1, 2]);
    assert_eq!(cmd(&["COPY", "a", "b", "REPLACE"]).keys(), vec![1, 2]);
    assert_eq!(cmd(&["hset", "h", "f", "v"]).keys(), vec![1]);
    assert_eq!(cmd(&["XADD", "s", "*", "f", "v"]).keys(), vec![1]);
    assert_eq!(cmd(&["PING"]).keys(), Vec::<usize>::new());
    // Declared keys of scripts (the masking check denies scripts anyway).
    assert_eq!(cmd(&["EVAL", "return 1", "1", "k"]).keys(), vec![3]);
}

#[test]
fn key_positions_cover_every_command_shape() {
    use super::codec::Keys;
    let at = |w: &[&str]| cmd(w).key_positions();
    assert_eq!(at(&["PING"]), Keys::None);
    assert_eq!(at(&["config", "get", "x"]), Keys::None);
    assert_eq!(at(&["client", "setname", "x"]), Keys::None);
    assert_eq!(at(&["GET"]), Keys::None);
    assert_eq!(at(&["getrange", "k", "0", "1"]), Keys::At(vec![1]));
    assert_eq!(at(&["BLPOP", "a", "b", "0"]), Keys::At(vec![1, 2]));
    assert_eq!(
        at(&["LMOVE", "a", "b", "LEFT", "RIGHT"]),
        Keys::At(vec![1, 2])
    );
    assert_eq!(at(&["SMOVE", "a", "b", "m"]), Keys::At(vec![1, 2]));
    assert_eq!(
        at(&["BITOP", "AND", "d", "a", "b"]),
        Keys::At(vec![2, 3, 4])
    );
    assert_eq!(
        at(&["ZUNIONSTORE", "d", "2", "a", "b", "WEIGHTS", "1", "2"]),
        Keys::At(vec![1, 3, 4])
    );
    assert_eq!(at(&["ZINTER", "2", "a", "b"]), Keys::At(vec![2, 3]));
    assert_eq!(at(&["ZINTER", "9", "a", "b"]), Keys::Unknown);
    assert_eq!(at(&["ZINTER", "x", "a"]), Keys::Unknown);
    assert_eq!(
        at(&["BLMPOP", "0", "2", "a", "b", "LEFT"]),
        Keys::At(vec![3, 4])
    );
    assert_eq!(
        at(&["XREAD", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]),
        Keys::At(vec![4, 5])
    );
    assert_eq!(
        at(&[
            "xreadgroup",
            "GROUP",
            "g",
            "c",
            "noack",
            "streams",
            "s",
            ">"
        ]),
        Keys::At(vec![6])
    );
    assert_eq!(at(&["XREAD", "STREAMS", "s1"]), Keys::Unknown);
    assert_eq!(
        at(&["SORT", "l", "LIMIT", "0", "5", "ALPHA"]),
        Keys::At(vec![1])
    );
    assert_eq!(at(&["SORT", "l", "STORE", "d"]), Keys::At(vec![1, 3]));
    assert_eq!(at(&["SORT", "l", "BY", "w_*"]), Keys::Unknown);
    assert_eq!(at(&["SORT", "l", "GET", "o_*"]), Keys::Unknown);
    assert_eq!(at(&["SORT", "l", "GET", "#"]), Keys::At(vec![1]));
    assert_eq!(
        at(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "d"]),
        Keys::At(vec![1, 7])
    );
    assert_eq!(at(&["MIGRATE", "h", "1", "k", "0", "5"]), Keys::Unknown);
    assert_eq!(at(&["OBJECT", "ENCODING", "k"]), Keys::At(vec![2]));
    assert_eq!(at(&["OBJECT", "HELP"]), Keys::None);
    assert_eq!(at(&["MEMORY", "USAGE", "k"]), Keys::At(vec![2]));
    assert_eq!(at(&["XINFO", "STREAM", "s", "FULL"]), Keys::At(vec![2]));
    assert_eq!(at(&["SSUBSCRIBE", "ch"]), Keys::None);
    assert_eq!(at(&["MODULE.COMMAND", "k"]), Keys::Unknown);
    assert_eq!(at(&["JSON.GET", "k"]), Keys::Unknown);
    assert!(cmd(&["get", "x"]).is("GET"));
    assert!(!cmd(&["get", "x"]).is("GETEX"));
    assert_eq!(cmd(&["Get"]).name_bytes(), b"Get");
}

#[test]
fn decode_raw_returns_the_bytes_as_they_came() {
    let wire = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n";
    let mut buf = BytesMut::from(&wire[..]);
    let mut d = Decoder::new(limits());
    let (c, raw) = d.decode_command_raw(&mut buf).unwrap().unwrap();
    assert_eq!(c, cmd(&["GET", "k"]));
    assert_eq!(raw.as_deref(), Some(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]));
    let (c, raw) = d.decode_command_raw(&mut buf).unwrap().unwrap();
    assert_eq!(c, cmd(&["PING"]));
    assert_eq!(raw, None);
    assert!(d.decode_command_raw(&mut buf).unwrap().is_none());
    let mut buf = BytesMut::from(&b"*2\r\n$1\r\na\r\n:1\r\n+x"[..]);
    let (v, raw) = d.decode_raw(&mut buf).unwrap().unwrap();
    assert_eq!(v, Value::Array(Some(vec![bulk("a"), Value::Integer(1)])));
    assert_eq!(&raw[..], b"*2\r\n$1\r\na\r\n:1\r\n");
    assert!(d.decode_raw(&mut buf).unwrap().is_none());
}

#[test]
fn command_encode_round_trips() {
    let c = cmd(&["SET", "k", "hello\r\nworld", ""]);
    assert_eq!(
        c.encode(),
        &b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$12\r\nhello\r\nworld\r\n$0\r\n\r\n"[..]
    );
    let mut buf = BytesMut::from(&c.encode()[..]);
    assert_eq!(decode_command(&mut buf, &limits()).unwrap(), Some(c));
}

#[test]
fn error_reply_is_sanitized() {
    assert_eq!(
        error_reply("denied by policy"),
        &b"-ERR denied by policy\r\n"[..]
    );
    assert_eq!(
        error_reply("NOPERM this user has no permissions"),
        &b"-NOPERM this user has no permissions\r\n"[..]
    );
    assert_eq!(error_reply("WRONGTYPE"), &b"-WRONGTYPE\r\n"[..]);
    assert_eq!(error_reply("a\r\n+OK\r\nb"), &b"-ERR a  +OK  b\r\n"[..]);
    assert_eq!(error_reply("NOPERM x\n+OK"), &b"-NOPERM x +OK\r\n"[..]);
    assert_eq!(error_reply(""), &b"-ERR\r\n"[..]);
    assert_eq!(error_reply("I said no"), &b"-ERR I said no\r\n"[..]);
    // Line types built by the proxy cannot inject either.
    assert_eq!(Value::Simple(b("a\r\n-b")).to_bytes(), &b"+a  -b\r\n"[..]);
}

#[test]
fn debug_never_prints_contents() {
    let v = Value::Array(Some(vec![
        bulk("s3cret"),
        Value::Simple(b("s3cret")),
        Value::Map(vec![(bulk("s3cret"), Value::Verbatim(b("txt:s3cret")))]),
    ]));
    let s = format!("{v:?}");
    assert!(!s.contains("s3cret"), "{s}");
    assert!(s.contains("6 bytes"), "{s}");
    let c = cmd(&["AUTH", "user", "s3cret"]);
    let s = format!("{c:?}");
    assert!(!s.contains("s3cret"), "{s}");
    assert!(s.contains('6'), "{s}");
}
