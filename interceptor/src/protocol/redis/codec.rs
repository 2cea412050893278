//! Framing for RESP (the Redis serialization protocol, versions 2 and 3),
//! and client commands in both of the forms a Redis server accepts.
//!
//! The proxy reads raw bytes from two sockets into `BytesMut` buffers. The
//! decoders here cut whole values off the front of those buffers without
//! copying: a bulk string in a decoded [`Value`] is a slice of the bytes that
//! came off the socket.
//!
//! Rules that hold everywhere, because the peer is not trusted:
//! - every length and count is checked against a [`Limits`] before anything
//!   is buffered or allocated for it;
//! - no input panics. A bad value is a [`CodecError`] that ends its session
//!   with a clear reason, never the daemon;
//! - parsing is strict: a CR not followed by LF, a bare LF, bytes after a
//!   bulk string's payload, a sign or a non-digit in a length are all errors.
//!   A lenient proxy would be a policy bypass, since the proxy and the server
//!   could read different commands out of the same bytes.
//!
//! # Why there is a [`Decoder`] as well as [`decode`]
//!
//! A value is only returned once it is complete, and a big array may arrive
//! in thousands of reads. Re-scanning the whole buffer on each read would be
//! quadratic: a 512 MiB reply dripped one byte per segment would cost
//! 512 MiB of scanning per byte. A [`Decoder`] therefore remembers how far
//! its previous, incomplete scan got (the offset of the next unscanned
//! element and a stack of how many elements each open aggregate still
//! expects, at most `max_depth` entries) and resumes there. Each byte is
//! scanned once by the validating pre-scan, which allocates nothing but that
//! stack, and once more by the pass that builds the [`Value`] after the whole
//! value is known to be present and valid. Only the header line of a bulk
//! string whose payload is still arriving is re-read per call, and it is at
//! most a few dozen bytes.
//!
//! The free functions [`decode`] and [`decode_command`] are the same thing
//! with a fresh `Decoder` per call: fine for a buffer that is known to hold
//! whole values (tests, one-shot parsing), but linear in the buffered bytes
//! *per call*. A session must keep one `Decoder` per direction.
//!
//! # Not supported
//!
//! RESP3 streamed strings and aggregates (`$?`, `*?`, `;`, `.`), which Redis
//! never sends, and attributes (`|`) nested inside another aggregate (Redis
//! only sends them at top level): both are reported as `Malformed` rather
//! than forwarded half-understood.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// Bounds on what a peer may make the proxy buffer or allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest bulk string, bulk error or verbatim string payload, in bytes.
    pub max_bulk: usize,
    /// Most elements in one aggregate (entries, i.e. pairs, for maps and
    /// attributes).
    pub max_elements: usize,
    /// Deepest nesting of aggregates; a top-level array has depth 1.
    pub max_depth: usize,
    /// Longest line: an inline command, a simple string or error, or any
    /// type header, in bytes excluding CRLF.
    pub max_inline: usize,
}

impl Default for Limits {
    /// Redis's own limits: `proto-max-bulk-len` is 512 MiB, a multibulk
    /// request may have 1M arguments (for unauthenticated clients far fewer),
    /// inline requests are capped at 64 KiB (`PROTO_INLINE_MAX_SIZE`). Depth
    /// 64 is far beyond any reply Redis builds and keeps the build pass's
    /// recursion shallow.
    fn default() -> Self {
        Limits {
            max_bulk: 512 * 1024 * 1024,
            max_elements: 1024 * 1024,
            max_depth: 64,
            max_inline: 64 * 1024,
        }
    }
}

/// Why a value could not be decoded. Waiting for more bytes is not an error:
/// the decoders return `Ok(None)` for that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A declared size is over the limit. Reported as soon as the header is
    /// in, before the body is buffered, so the limits bound memory per
    /// session.
    #[error(
        "RESP {what} declares {len} {unit}, over the limit of {max}; \
         the peer is not speaking RESP or the value really is that large"
    )]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
        unit: &'static str,
    },
    /// The bytes break the protocol.
    #[error("malformed RESP: {detail}")]
    Malformed { detail: String },
    /// Aggregates nest deeper than the limit.
    #[error("RESP value nests aggregates {depth} deep, over the limit of {max}")]
    TooDeep { depth: usize, max: usize },
}

impl CodecError {
    /// The error reply to send a client before closing its session, worded
    /// like Redis's own ("Protocol error: ...").
    pub fn to_error_reply(&self) -> Bytes {
        error_reply(&format!("Protocol error: {self}"))
    }

    fn malformed(detail: impl Into<String>) -> Self {
        CodecError::Malformed {
            detail: detail.into(),
        }
    }
}

/// How a byte appears in operator-facing messages: `'x'` when printable.
fn byte_name(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// Name of a type byte, for messages.
fn type_name(ty: u8) -> &'static str {
    match ty {
        b'+' => "simple string",
        b'-' => "simple error",
        b':' => "integer",
        b'$' => "bulk string",
        b'*' => "array",
        b'_' => "null",
        b'#' => "boolean",
        b',' => "double",
        b'(' => "big number",
        b'!' => "bulk error",
        b'=' => "verbatim string",
        b'%' => "map",
        b'~' => "set",
        b'|' => "attribute",
        b'>' => "push",
        _ => "value",
    }
}

/// One RESP value, RESP2 and RESP3. Strings are slices of the received bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`: the whole line, code included.
    Error(Bytes),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo`; `None` is RESP2's null bulk string `$-1`.
    Bulk(Option<Bytes>),
    /// `*2 ...`; `None` is RESP2's null array `*-1`.
    Array(Option<Vec<Value>>),
    /// `_` (RESP3 null).
    Null,
    /// `#t` / `#f`
    Boolean(bool),
    /// `,1.5`, kept as text so `inf`, `-inf`, `nan` and the exact digits
    /// survive a round trip.
    Double(Bytes),
    /// `(123...`, kept as text: it may not fit any integer type.
    BigNumber(Bytes),
    /// `!<len>`: the whole payload, code included.
    BulkError(Bytes),
    /// `=<len>\r\ntxt:...`: the whole payload, including the 3-character
    /// format and the `:`.
    Verbatim(Bytes),
    /// `%`
    Map(Vec<(Value, Value)>),
    /// `~`
    Set(Vec<Value>),
    /// `|`: precedes the reply it annotates and is returned as a value of
    /// its own, so forwarding it unchanged is one more `encode`.
    Attribute(Vec<(Value, Value)>),
    /// `>`: out-of-band data (pub/sub messages, invalidations).
    Push(Vec<Value>),
}

impl fmt::Debug for Value {
    // Values may be secrets (AUTH passwords, cached tokens): print only
    // their shape and sizes, never their contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Simple(b) => write!(f, "Simple({} bytes)", b.len()),
            Value::Error(b) => write!(f, "Error({} bytes)", b.len()),
            Value::Integer(_) => f.write_str("Integer"),
            Value::Bulk(None) => f.write_str("Bulk(null)"),
            Value::Bulk(Some(b)) => write!(f, "Bulk({} bytes)", b.len()),
            Value::Array(None) => f.write_str("Array(null)"),
            Value::Array(Some(v)) => f.debug_tuple("Array").field(v).finish(),
            Value::Null => f.write_str("Null"),
            Value::Boolean(_) => f.write_str("Boolean"),
            Value::Double(b) => write!(f, "Double({} bytes)", b.len()),
            Value::BigNumber(b) => write!(f, "BigNumber({} bytes)", b.len()),
            Value::BulkError(b) => write!(f, "BulkError({} bytes)", b.len()),
            Value::Verbatim(b) => write!(f, "Verbatim({} bytes)", b.len()),
            Value::Map(m) => f.debug_tuple("Map").field(m).finish(),
            Value::Set(v) => f.debug_tuple("Set").field(v).finish(),
            Value::Attribute(m) => f.debug_tuple("Attribute").field(m).finish(),
            Value::Push(v) => f.debug_tuple("Push").field(v).finish(),
        }
    }
}

impl Value {
    /// Appends the value as it goes on the wire.
    ///
    /// Line types (simple strings and errors, doubles, big numbers) cannot
    /// carry CR or LF; any in a value the proxy built itself are replaced by
    /// spaces, so a message can never inject a second reply. Decoded values
    /// never contain them.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::Simple(b) => put_line(out, b'+', b),
            Value::Error(b) => put_line(out, b'-', b),
            Value::Integer(n) => {
                out.put_u8(b':');
                out.put_slice(n.to_string().as_bytes());
                out.put_slice(b"\r\n");
            }
            Value::Bulk(None) => out.put_slice(b"$-1\r\n"),
            Value::Bulk(Some(b)) => put_blob(out, b'$', b),
            Value::Array(None) => out.put_slice(b"*-1\r\n"),
            Value::Array(Some(v)) => put_seq(out, b'*', v),
            Value::Null => out.put_slice(b"_\r\n"),
            Value::Boolean(true) => out.put_slice(b"#t\r\n"),
            Value::Boolean(false) => out.put_slice(b"#f\r\n"),
            Value::Double(b) => put_line(out, b',', b),
            Value::BigNumber(b) => put_line(out, b'(', b),
            Value::BulkError(b) => put_blob(out, b'!', b),
            Value::Verbatim(b) => put_blob(out, b'=', b),
            Value::Map(m) => put_pairs(out, b'%', m),
            Value::Set(v) => put_seq(out, b'~', v),
            Value::Attribute(m) => put_pairs(out, b'|', m),
            Value::Push(v) => put_seq(out, b'>', v),
        }
    }

    /// The whole value as it goes on the wire.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn put_header(out: &mut BytesMut, ty: u8, n: usize) {
    out.put_u8(ty);
    out.put_slice(n.to_string().as_bytes());
    out.put_slice(b"\r\n");
}

fn put_line(out: &mut BytesMut, ty: u8, text: &[u8]) {
    out.put_u8(ty);
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(text);
    }
    out.put_slice(b"\r\n");
}

fn put_blob(out: &mut BytesMut, ty: u8, payload: &[u8]) {
    put_header(out, ty, payload.len());
    out.put_slice(payload);
    out.put_slice(b"\r\n");
}

fn put_seq(out: &mut BytesMut, ty: u8, items: &[Value]) {
    put_header(out, ty, items.len());
    for item in items {
        item.encode(out);
    }
}

fn put_pairs(out: &mut BytesMut, ty: u8, pairs: &[(Value, Value)]) {
    put_header(out, ty, pairs.len());
    for (k, v) in pairs {
        k.encode(out);
        v.encode(out);
    }
}

/// `"-ERR <message>\r\n"`, the reply the proxy sends when it refuses
/// something. CR and LF in `message` become spaces, so a message that quotes
/// client input cannot end the reply early and inject another.
///
/// A message that already starts with an error code (a first word of two or
/// more upper-case letters followed by a space or the end, as in `NOPERM ...`
/// or `WRONGTYPE ...`) is sent as is: clients branch on the code.
pub fn error_reply(message: &str) -> Bytes {
    let first = message.split(' ').next().unwrap_or("");
    let has_code = first.len() >= 2 && first.bytes().all(|b| b.is_ascii_uppercase());
    let mut line = Vec::with_capacity(message.len() + 4);
    if !has_code {
        line.extend_from_slice(b"ERR");
        if !message.is_empty() {
            line.push(b' ');
        }
    }
    line.extend_from_slice(message.as_bytes());
    let mut out = BytesMut::with_capacity(line.len() + 3);
    put_line(&mut out, b'-', &line);
    out.freeze()
}

/// A client command: the arguments, the command name first. Arguments are
/// slices of the received bytes when the command came as a RESP array.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Command {
    pub args: Vec<Bytes>,
}

impl fmt::Debug for Command {
    // Arguments may be passwords or values: print only their sizes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<usize> = self.args.iter().map(Bytes::len).collect();
        f.debug_struct("Command").field("arg_lens", &sizes).finish()
    }
}

/// Commands whose first argument is a subcommand that changes what they do
/// (`CONFIG GET` reads, `CONFIG SET` reconfigures the server), so policy must
/// see both words.
const CONTAINERS: &[&str] = &[
    "CONFIG", "CLIENT", "CLUSTER", "COMMAND", "DEBUG", "FUNCTION", "LATENCY", "MEMORY", "MODULE",
    "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO", "ACL",
];

/// Where a command's keys are, as Redis 7.0's `COMMAND` reports them:
/// none, a (first, last, step) range of argument positions (a negative last
/// counts from the end), or positions that depend on the arguments
/// (`movablekeys`), worked out in [`Command::key_positions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeySpec {
    None,
    Range(i32, i32, i32),
    Movable,
}

/// Every command of Redis 7.0 with its key positions, sorted by name for a
/// binary search. Generated from `COMMAND` of redis-server 7.0.15. Shard
/// channels (SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH) are channels, not keys.
const KEY_TABLE: &[(&[u8], KeySpec)] = &[
    (b"ACL", KeySpec::None),
    (b"APPEND", KeySpec::Range(1, 1, 1)),
    (b"ASKING", KeySpec::None),
    (b"AUTH", KeySpec::None),
    (b"BGREWRITEAOF", KeySpec::None),
    (b"BGSAVE", KeySpec::None),
    (b"BITCOUNT", KeySpec::Range(1, 1, 1)),
    (b"BITFIELD", KeySpec::Range(1, 1, 1)),
    (b"BITFIELD_RO", KeySpec::Range(1, 1, 1)),
    (b"BITOP", KeySpec::Range(2, -1, 1)),
    (b"BITPOS", KeySpec::Range(1, 1, 1)),
    (b"BLMOVE", KeySpec::Range(1, 2, 1)),
    (b"BLMPOP", KeySpec::Movable),
    (b"BLPOP", KeySpec::Range(1, -2, 1)),
    (b"BRPOP", KeySpec::Range(1, -2, 1)),
    (b"BRPOPLPUSH", KeySpec::Range(1, 2, 1)),
    (b"BZMPOP", KeySpec::Movable),
    (b"BZPOPMAX", KeySpec::Range(1, -2, 1)),
    (b"BZPOPMIN", KeySpec::Range(1, -2, 1)),
    (b"CLIENT", KeySpec::None),
    (b"CLUSTER", KeySpec::None),
    (b"COMMAND", KeySpec::None),
    (b"CONFIG", KeySpec::None),
    (b"COPY", KeySpec::Range(1, 2, 1)),
    (b"DBSIZE", KeySpec::None),
    (b"DEBUG", KeySpec::None),
    (b"DECR", KeySpec::Range(1, 1, 1)),
    (b"DECRBY", KeySpec::Range(1, 1, 1)),
    (b"DEL", KeySpec::Range(1, -1, 1)),
    (b"DISCARD", KeySpec::None),
    (b"DUMP", KeySpec::Range(1, 1, 1)),
    (b"ECHO", KeySpec::None),
    (b"EVAL", KeySpec::Movable),
    (b"EVALSHA", KeySpec::Movable),
    (b"EVALSHA_RO", KeySpec::Movable),
    (b"EVAL_RO", KeySpec::Movable),
    (b"EXEC", KeySpec::None),
    (b"EXISTS", KeySpec::Range(1, -1, 1)),
    (b"EXPIRE", KeySpec::Range(1, 1, 1)),
    (b"EXPIREAT", KeySpec::Range(1, 1, 1)),
    (b"EXPIRETIME", KeySpec::Range(1, 1, 1)),
    (b"FAILOVER", KeySpec::None),
    (b"FCALL", KeySpec::Movable),
    (b"FCALL_RO", KeySpec::Movable),
    (b"FLUSHALL", KeySpec::None),
    (b"FLUSHDB", KeySpec::None),
    (b"FUNCTION", KeySpec::None),
    (b"GEOADD", KeySpec::Range(1, 1, 1)),
    (b"GEODIST", KeySpec::Range(1, 1, 1)),
    (b"GEOHASH", KeySpec::Range(1, 1, 1)),
    (b"GEOPOS", KeySpec::Range(1, 1, 1)),
    (b"GEORADIUS", KeySpec::Movable),
    (b"GEORADIUSBYMEMBER", KeySpec::Movable),
    (b"GEORADIUSBYMEMBER_RO", KeySpec::Range(1, 1, 1)),
    (b"GEORADIUS_RO", KeySpec::Range(1, 1, 1)),
    (b"GEOSEARCH", KeySpec::Range(1, 1, 1)),
    (b"GEOSEARCHSTORE", KeySpec::Range(1, 2, 1)),
    (b"GET", KeySpec::Range(1, 1, 1)),
    (b"GETBIT", KeySpec::Range(1, 1, 1)),
    (b"GETDEL", KeySpec::Range(1, 1, 1)),
    (b"GETEX", KeySpec::Range(1, 1, 1)),
    (b"GETRANGE", KeySpec::Range(1, 1, 1)),
    (b"GETSET", KeySpec::Range(1, 1, 1)),
    (b"HDEL", KeySpec::Range(1, 1, 1)),
    (b"HELLO", KeySpec::None),
    (b"HEXISTS", KeySpec::Range(1, 1, 1)),
    (b"HGET", KeySpec::Range(1, 1, 1)),
    (b"HGETALL", KeySpec::Range(1, 1, 1)),
    (b"HINCRBY", KeySpec::Range(1, 1, 1)),
    (b"HINCRBYFLOAT", KeySpec::Range(1, 1, 1)),
    (b"HKEYS", KeySpec::Range(1, 1, 1)),
    (b"HLEN", KeySpec::Range(1, 1, 1)),
    (b"HMGET", KeySpec::Range(1, 1, 1)),
    (b"HMSET", KeySpec::Range(1, 1, 1)),
    (b"HRANDFIELD", KeySpec::Range(1, 1, 1)),
    (b"HSCAN", KeySpec::Range(1, 1, 1)),
    (b"HSET", KeySpec::Range(1, 1, 1)),
    (b"HSETNX", KeySpec::Range(1, 1, 1)),
    (b"HSTRLEN", KeySpec::Range(1, 1, 1)),
    (b"HVALS", KeySpec::Range(1, 1, 1)),
    (b"INCR", KeySpec::Range(1, 1, 1)),
    (b"INCRBY", KeySpec::Range(1, 1, 1)),
    (b"INCRBYFLOAT", KeySpec::Range(1, 1, 1)),
    (b"INFO", KeySpec::None),
    (b"KEYS", KeySpec::None),
    (b"LASTSAVE", KeySpec::None),
    (b"LATENCY", KeySpec::None),
    (b"LCS", KeySpec::Range(1, 2, 1)),
    (b"LINDEX", KeySpec::Range(1, 1, 1)),
    (b"LINSERT", KeySpec::Range(1, 1, 1)),
    (b"LLEN", KeySpec::Range(1, 1, 1)),
    (b"LMOVE", KeySpec::Range(1, 2, 1)),
    (b"LMPOP", KeySpec::Movable),
    (b"LOLWUT", KeySpec::None),
    (b"LPOP", KeySpec::Range(1, 1, 1)),
    (b"LPOS", KeySpec::Range(1, 1, 1)),
    (b"LPUSH", KeySpec::Range(1, 1, 1)),
    (b"LPUSHX", KeySpec::Range(1, 1, 1)),
    (b"LRANGE", KeySpec::Range(1, 1, 1)),
    (b"LREM", KeySpec::Range(1, 1, 1)),
    (b"LSET", KeySpec::Range(1, 1, 1)),
    (b"LTRIM", KeySpec::Range(1, 1, 1)),
    (b"MEMORY", KeySpec::None),
    (b"MGET", KeySpec::Range(1, -1, 1)),
    (b"MIGRATE", KeySpec::Movable),
    (b"MODULE", KeySpec::None),
    (b"MONITOR", KeySpec::None),
    (b"MOVE", KeySpec::Range(1, 1, 1)),
    (b"MSET", KeySpec::Range(1, -1, 2)),
    (b"MSETNX", KeySpec::Range(1, -1, 2)),
    (b"MULTI", KeySpec::None),
    (b"OBJECT", KeySpec::None),
    (b"PERSIST", KeySpec::Range(1, 1, 1)),
    (b"PEXPIRE", KeySpec::Range(1, 1, 1)),
    (b"PEXPIREAT", KeySpec::Range(1, 1, 1)),
    (b"PEXPIRETIME", KeySpec::Range(1, 1, 1)),
    (b"PFADD", KeySpec::Range(1, 1, 1)),
    (b"PFCOUNT", KeySpec::Range(1, -1, 1)),
    (b"PFDEBUG", KeySpec::Range(2, 2, 1)),
    (b"PFMERGE", KeySpec::Range(1, -1, 1)),
    (b"PFSELFTEST", KeySpec::None),
    (b"PING", KeySpec::None),
    (b"PSETEX", KeySpec::Range(1, 1, 1)),
    (b"PSUBSCRIBE", KeySpec::None),
    (b"PSYNC", KeySpec::None),
    (b"PTTL", KeySpec::Range(1, 1, 1)),
    (b"PUBLISH", KeySpec::None),
    (b"PUBSUB", KeySpec::None),
    (b"PUNSUBSCRIBE", KeySpec::None),
    (b"QUIT", KeySpec::None),
    (b"RANDOMKEY", KeySpec::None),
    (b"READONLY", KeySpec::None),
    (b"READWRITE", KeySpec::None),
    (b"RENAME", KeySpec::Range(1, 2, 1)),
    (b"RENAMENX", KeySpec::Range(1, 2, 1)),
    (b"REPLCONF", KeySpec::None),
    (b"REPLICAOF", KeySpec::None),
    (b"RESET", KeySpec::None),
    (b"RESTORE", KeySpec::Range(1, 1, 1)),
    (b"RESTORE-ASKING", KeySpec::Range(1, 1, 1)),
    (b"ROLE", KeySpec::None),
    (b"RPOP", KeySpec::Range(1, 1, 1)),
    (b"RPOPLPUSH", KeySpec::Range(1, 2, 1)),
    (b"RPUSH", KeySpec::Range(1, 1, 1)),
    (b"RPUSHX", KeySpec::Range(1, 1, 1)),
    (b"SADD", KeySpec::Range(1, 1, 1)),
    (b"SAVE", KeySpec::None),
    (b"SCAN", KeySpec::None),
    (b"SCARD", KeySpec::Range(1, 1, 1)),
    (b"SCRIPT", KeySpec::None),
    (b"SDIFF", KeySpec::Range(1, -1, 1)),
    (b"SDIFFSTORE", KeySpec::Range(1, -1, 1)),
    (b"SELECT", KeySpec::None),
    (b"SET", KeySpec::Range(1, 1, 1)),
    (b"SETBIT", KeySpec::Range(1, 1, 1)),
    (b"SETEX", KeySpec::Range(1, 1, 1)),
    (b"SETNX", KeySpec::Range(1, 1, 1)),
    (b"SETRANGE", KeySpec::Range(1, 1, 1)),
    (b"SHUTDOWN", KeySpec::None),
    (b"SINTER", KeySpec::Range(1, -1, 1)),
    (b"SINTERCARD", KeySpec::Movable),
    (b"SINTERSTORE", KeySpec::Range(1, -1, 1)),
    (b"SISMEMBER", KeySpec::Range(1, 1, 1)),
    (b"SLAVEOF", KeySpec::None),
    (b"SLOWLOG", KeySpec::None),
    (b"SMEMBERS", KeySpec::Range(1, 1, 1)),
    (b"SMISMEMBER", KeySpec::Range(1, 1, 1)),
    (b"SMOVE", KeySpec::Range(1, 2, 1)),
    (b"SORT", KeySpec::Movable),
    (b"SORT_RO", KeySpec::Movable),
    (b"SPOP", KeySpec::Range(1, 1, 1)),
    (b"SPUBLISH", KeySpec::None),
    (b"SRANDMEMBER", KeySpec::Range(1, 1, 1)),
    (b"SREM", KeySpec::Range(1, 1, 1)),
    (b"SSCAN", KeySpec::Range(1, 1, 1)),
    (b"SSUBSCRIBE", KeySpec::None),
    (b"STRLEN", KeySpec::Range(1, 1, 1)),
    (b"SUBSCRIBE", KeySpec::None),
    (b"SUBSTR", KeySpec::Range(1, 1, 1)),
    (b"SUNION", KeySpec::Range(1, -1, 1)),
    (b"SUNIONSTORE", KeySpec::Range(1, -1, 1)),
    (b"SUNSUBSCRIBE", KeySpec::None),
    (b"SWAPDB", KeySpec::None),
    (b"SYNC", KeySpec::None),
    (b"TIME", KeySpec::None),
    (b"TOUCH", KeySpec::Range(1, -1, 1)),
    (b"TTL", KeySpec::Range(1, 1, 1)),
    (b"TYPE", KeySpec::Range(1, 1, 1)),
    (b"UNLINK", KeySpec::Range(1, -1, 1)),
    (b"UNSUBSCRIBE", KeySpec::None),
    (b"UNWATCH", KeySpec::None),
    (b"WAIT", KeySpec::None),
    (b"WATCH", KeySpec::Range(1, -1, 1)),
    (b"XACK", KeySpec::Range(1, 1, 1)),
    (b"XADD", KeySpec::Range(1, 1, 1)),
    (b"XAUTOCLAIM", KeySpec::Range(1, 1, 1)),
    (b"XCLAIM", KeySpec::Range(1, 1, 1)),
    (b"XDEL", KeySpec::Range(1, 1, 1)),
    (b"XGROUP", KeySpec::None),
    (b"XINFO", KeySpec::None),
    (b"XLEN", KeySpec::Range(1, 1, 1)),
    (b"XPENDING", KeySpec::Range(1, 1, 1)),
    (b"XRANGE", KeySpec::Range(1, 1, 1)),
    (b"XREAD", KeySpec::Movable),
    (b"XREADGROUP", KeySpec::Movable),
    (b"XREVRANGE", KeySpec::Range(1, 1, 1)),
    (b"XSETID", KeySpec::Range(1, 1, 1)),
    (b"XTRIM", KeySpec::Range(1, 1, 1)),
    (b"ZADD", KeySpec::Range(1, 1, 1)),
    (b"ZCARD", KeySpec::Range(1, 1, 1)),
    (b"ZCOUNT", KeySpec::Range(1, 1, 1)),
    (b"ZDIFF", KeySpec::Movable),
    (b"ZDIFFSTORE", KeySpec::Movable),
    (b"ZINCRBY", KeySpec::Range(1, 1, 1)),
    (b"ZINTER", KeySpec::Movable),
    (b"ZINTERCARD", KeySpec::Movable),
    (b"ZINTERSTORE", KeySpec::Movable),
    (b"ZLEXCOUNT", KeySpec::Range(1, 1, 1)),
    (b"ZMPOP", KeySpec::Movable),
    (b"ZMSCORE", KeySpec::Range(1, 1, 1)),
    (b"ZPOPMAX", KeySpec::Range(1, 1, 1)),
    (b"ZPOPMIN", KeySpec::Range(1, 1, 1)),
    (b"ZRANDMEMBER", KeySpec::Range(1, 1, 1)),
    (b"ZRANGE", KeySpec::Range(1, 1, 1)),
    (b"ZRANGEBYLEX", KeySpec::Range(1, 1, 1)),
    (b"ZRANGEBYSCORE", KeySpec::Range(1, 1, 1)),
    (b"ZRANGESTORE", KeySpec::Range(1, 2, 1)),
    (b"ZRANK", KeySpec::Range(1, 1, 1)),
    (b"ZREM", KeySpec::Range(1, 1, 1)),
    (b"ZREMRANGEBYLEX", KeySpec::Range(1, 1, 1)),
    (b"ZREMRANGEBYRANK", KeySpec::Range(1, 1, 1)),
    (b"ZREMRANGEBYSCORE", KeySpec::Range(1, 1, 1)),
    (b"ZREVRANGE", KeySpec::Range(1, 1, 1)),
    (b"ZREVRANGEBYLEX", KeySpec::Range(1, 1, 1)),
    (b"ZREVRANGEBYSCORE", KeySpec::Range(1, 1, 1)),
    (b"ZREVRANK", KeySpec::Range(1, 1, 1)),
    (b"ZSCAN", KeySpec::Range(1, 1, 1)),
    (b"ZSCORE", KeySpec::Range(1, 1, 1)),
    (b"ZUNION", KeySpec::Movable),
    (b"ZUNIONSTORE", KeySpec::Movable),
];

/// Where the keys of a command are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// The command takes no key (PING, SELECT, CONFIG GET, ...).
    None,
    /// These argument positions are keys.
    At(Vec<usize>),
    /// The proxy cannot tell: a command it does not know (a module's, or a
    /// newer Redis's), one with malformed key arguments, or one that may
    /// read keys it does not name (SORT ... BY/GET, MIGRATE).
    Unknown,
}

/// Longest command name looked up (`GEORADIUSBYMEMBER_RO` has 20 bytes).
const NAME_BUF: usize = 24;

/// `name` upper-cased into `buf`, or None when too long to be a command.
fn upper_into<'a>(name: &[u8], buf: &'a mut [u8; NAME_BUF]) -> Option<&'a [u8]> {
    if name.len() > NAME_BUF {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    Some(&buf[..name.len()])
}

fn lookup(name: &[u8]) -> Option<KeySpec> {
    let mut buf = [0u8; NAME_BUF];
    let up = upper_into(name, &mut buf)?;
    KEY_TABLE
        .binary_search_by(|(n, _)| (*n).cmp(up))
        .ok()
        .map(|i| KEY_TABLE[i].1)
}

/// A decimal argument (numkeys), bounded by what the command could hold.
fn parse_count(arg: Option<&Bytes>) -> Option<usize> {
    let a = arg?;
    if a.is_empty() || a.len() > 10 || !a.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(a).ok()?.parse().ok()
}

fn upper_lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

impl Command {
    /// The command name, upper-cased (Redis matches names case-blind);
    /// invalid UTF-8 is replaced, so it can never match a real command.
    /// `""` when there are no arguments. Allocates: on the hot path use
    /// [`Command::is`] or [`Command::name_bytes`].
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| upper_lossy(a))
            .unwrap_or_default()
    }

    /// The name as the client sent it (any case).
    pub fn name_bytes(&self) -> &[u8] {
        self.args.first().map_or(&[][..], |a| &a[..])
    }

    /// Whether the command is `name` (given upper-case), without allocating.
    pub fn is(&self, name: &str) -> bool {
        self.name_bytes().eq_ignore_ascii_case(name.as_bytes())
    }

    /// Whether argument `i` is `word` (any case).
    pub fn arg_is(&self, i: usize, word: &str) -> bool {
        self.args
            .get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(word.as_bytes()))
    }

    /// Whether the command is one whose first argument is a subcommand.
    pub fn is_container(&self) -> bool {
        let mut buf = [0u8; NAME_BUF];
        upper_into(self.name_bytes(), &mut buf)
            .and_then(|n| std::str::from_utf8(n).ok())
            .is_some_and(|n| CONTAINERS.contains(&n))
    }

    /// The name plus the upper-cased subcommand for container commands
    /// (`CONFIG SET`, `ACL SETUSER`, ...), otherwise just the name. A
    /// container without a subcommand is just its name.
    pub fn full_name(&self) -> String {
        let name = self.name();
        match self.args.get(1) {
            Some(sub) if CONTAINERS.contains(&name.as_str()) => {
                format!("{name} {}", upper_lossy(sub))
            }
            _ => name,
        }
    }

    /// Indices into `args` of the keys, for commands whose keys are known.
    /// Unknown commands give an empty list: callers that must be safe use
    /// [`Command::key_positions`], which tells "no keys" from "unknown".
    pub fn keys(&self) -> Vec<usize> {
        match self.key_positions() {
            Keys::At(v) => v,
            Keys::None | Keys::Unknown => Vec::new(),
        }
    }

    /// Where the keys of this command are (see [`Keys`]). Every command of
    /// Redis 7.0 is known; a container command's keys follow its
    /// subcommand (`OBJECT ENCODING key`, `XINFO STREAM key`, ...).
    pub fn key_positions(&self) -> Keys {
        let n = self.args.len();
        let Some(spec) = lookup(self.name_bytes()) else {
            return Keys::Unknown;
        };
        let from = |first: usize| -> Keys {
            if first < n {
                Keys::At(vec![first])
            } else {
                Keys::None
            }
        };
        match spec {
            KeySpec::None => {
                // Containers whose subcommands take a key.
                let keyed = (self.is("OBJECT") && !self.arg_is(1, "HELP"))
                    || (self.is("MEMORY") && self.arg_is(1, "USAGE"))
                    || (self.is("XINFO") && !self.arg_is(1, "HELP"))
                    || (self.is("XGROUP") && !self.arg_is(1, "HELP"));
                if keyed {
                    from(2)
                } else {
                    Keys::None
                }
            }
            KeySpec::Range(first, last, step) => {
                let (first, step) = (first as usize, step.max(1) as usize);
                let last = if last < 0 {
                    n as i64 + i64::from(last)
                } else {
                    i64::from(last)
                };
                let mut out = Vec::new();
                let mut i = first;
                while (i as i64) <= last && i < n {
                    out.push(i);
                    i += step;
                }
                if out.is_empty() {
                    // Too few arguments: the server answers with an error.
                    Keys::None
                } else {
                    Keys::At(out)
                }
            }
            KeySpec::Movable => self.movable_keys(),
        }
    }

    /// Key positions of the `movablekeys` commands.
    fn movable_keys(&self) -> Keys {
        let n = self.args.len();
        // numkeys at `at`, the keys right after it, `extra` positions before.
        let numkeys = |at: usize, extra: &[usize]| -> Keys {
            let Some(k) = parse_count(self.args.get(at)) else {
                return Keys::Unknown;
            };
            if at + k >= n {
                return Keys::Unknown;
            }
            let mut v: Vec<usize> = extra.iter().copied().filter(|&i| i < n).collect();
            v.extend(at + 1..at + 1 + k);
            Keys::At(v)
        };
        let mut buf = [0u8; NAME_BUF];
        let name = upper_into(self.name_bytes(), &mut buf).unwrap_or_default();
        match name {
            b"ZUNION" | b"ZINTER" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP"
            | b"ZMPOP" => numkeys(1, &[]),
            b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => numkeys(2, &[1]),
            b"BLMPOP" | b"BZMPOP" | b"EVAL" | b"EVAL_RO" | b"EVALSHA" | b"EVALSHA_RO"
            | b"FCALL" | b"FCALL_RO" => numkeys(2, &[]),
            b"XREAD" | b"XREADGROUP" => {
                let mut i = 1;
                while i < n {
                    let a = &self.args[i];
                    if a.eq_ignore_ascii_case(b"STREAMS") {
                        let rest = n - i - 1;
                        if rest == 0 || !rest.is_multiple_of(2) {
                            return Keys::Unknown;
                        }
                        return Keys::At((i + 1..i + 1 + rest / 2).collect());
                    }
                    i += if a.eq_ignore_ascii_case(b"COUNT") || a.eq_ignore_ascii_case(b"BLOCK") {
                        2
                    } else if a.eq_ignore_ascii_case(b"GROUP") {
                        3
                    } else if a.eq_ignore_ascii_case(b"NOACK") {
                        1
                    } else {
                        return Keys::Unknown;
                    };
                }
                Keys::Unknown
            }
            b"SORT" | b"SORT_RO" => {
                if n < 2 {
                    return Keys::None;
                }
                let mut v = vec![1];
                let mut i = 2;
                while i < n {
                    let a = &self.args[i];
                    if a.eq_ignore_ascii_case(b"GET") {
                        // GET # is the element itself; any other pattern
                        // reads other keys.
                        if self.args.get(i + 1).is_none_or(|p| &p[..] != b"#") {
                            return Keys::Unknown;
                        }
                        i += 2;
                    } else if a.eq_ignore_ascii_case(b"BY") {
                        // BY nosort / a constant is harmless, a pattern reads keys.
                        if self.args.get(i + 1).is_none_or(|p| p.contains(&b'*')) {
                            return Keys::Unknown;
                        }
                        i += 2;
                    } else if a.eq_ignore_ascii_case(b"STORE") {
                        match self.args.get(i + 1) {
                            Some(_) => v.push(i + 1),
                            None => return Keys::Unknown,
                        }
                        i += 2;
                    } else if a.eq_ignore_ascii_case(b"LIMIT") {
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                Keys::At(v)
            }
            b"GEORADIUS" | b"GEORADIUSBYMEMBER" => {
                if n < 2 {
                    return Keys::None;
                }
                let mut v = vec![1];
                for i in 2..n {
                    let a = &self.args[i];
                    let store =
                        a.eq_ignore_ascii_case(b"STORE") || a.eq_ignore_ascii_case(b"STOREDIST");
                    if store && i + 1 < n {
                        v.push(i + 1);
                    }
                }
                Keys::At(v)
            }
            // MIGRATE and anything else that Redis marks movable.
            _ => Keys::Unknown,
        }
    }

    /// The command as a RESP array of bulk strings, the form every server
    /// accepts whatever form the client used.
    pub fn encode(&self) -> Bytes {
        let size: usize = self.args.iter().map(|a| a.len() + 16).sum::<usize>() + 16;
        let mut out = BytesMut::with_capacity(size);
        put_header(&mut out, b'*', self.args.len());
        for a in &self.args {
            put_blob(&mut out, b'$', a);
        }
        out.freeze()
    }
}

/// Decodes one whole value off the front of `buf` (server replies, or client
/// commands in RESP array form) with a fresh [`Decoder`].
///
/// `Ok(None)`: incomplete, `buf` untouched. This re-scans everything buffered
/// on each call; a session reading from a socket must use a [`Decoder`],
/// which resumes where the last call stopped (see the module docs).
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Value>, CodecError> {
    Decoder::new(*limits).decode(buf)
}

/// Decodes one client command off the front of `buf` with a fresh
/// [`Decoder`]; see [`Decoder::decode_command`]. Like [`decode`], use a
/// `Decoder` for a socket.
pub fn decode_command(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Command>, CodecError> {
    Decoder::new(*limits).decode_command(buf)
}

/// A resumable decoder for one direction of one connection.
///
/// It remembers how far it validated the incomplete value at the front of
/// the buffer, so it must only ever see the one buffer, with bytes appended
/// at the back and removed from the front by the decoder alone. (If the
/// buffer is found shorter than what was scanned, the scan restarts.)
#[derive(Debug, Clone)]
pub struct Decoder {
    limits: Limits,
    scan: Scan,
    /// How far an incomplete inline command has been searched for its LF.
    inline_from: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            scan: Scan::default(),
            inline_from: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one whole value off the front of `buf`. `Ok(None)`: the value
    /// is incomplete and `buf` is untouched. After an error the stream is
    /// unusable (there is no way to find the next value boundary).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Value>, CodecError> {
        let Some(end) = self.run_scan(buf, false)? else {
            return Ok(None);
        };
        let data = buf.split_to(end).freeze();
        let mut pos = 0;
        let value = build(&data, &mut pos, 1, &self.limits)?;
        if pos != data.len() {
            return Err(CodecError::malformed(format!(
                "internal: built {pos} of {} scanned bytes",
                data.len()
            )));
        }
        Ok(Some(value))
    }

    /// [`Decoder::decode`], also returning the bytes the value occupied, so
    /// a value forwarded unchanged is written as it came (no re-encoding).
    pub fn decode_raw(&mut self, buf: &mut BytesMut) -> Result<Option<(Value, Bytes)>, CodecError> {
        let Some(end) = self.run_scan(buf, false)? else {
            return Ok(None);
        };
        let data = buf.split_to(end).freeze();
        let mut pos = 0;
        let value = build(&data, &mut pos, 1, &self.limits)?;
        if pos != data.len() {
            return Err(CodecError::malformed(format!(
                "internal: built {pos} of {} scanned bytes",
                data.len()
            )));
        }
        Ok(Some((value, data)))
    }

    /// [`Decoder::decode_command`], also returning the command's bytes when
    /// it came as a RESP array (`None` for an inline command, which the
    /// proxy re-encodes as an array so that the server reads exactly the
    /// words the policy saw).
    pub fn decode_command_raw(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Command, Option<Bytes>)>, CodecError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            if buf[0] != b'*' {
                let Some(line) = self.inline_line(buf)? else {
                    return Ok(None);
                };
                let args = split_inline(&line)?;
                if args.is_empty() {
                    continue;
                }
                return Ok(Some((Command { args }, None)));
            }
            let Some(end) = self.run_scan(buf, true)? else {
                return Ok(None);
            };
            let data = buf.split_to(end).freeze();
            let args = command_args(&data, &self.limits)?;
            if args.is_empty() {
                continue;
            }
            return Ok(Some((Command { args }, Some(data))));
        }
    }

    /// Decodes one client command off the front of `buf`, in either form a
    /// Redis server accepts: a RESP array of bulk strings (when the first
    /// byte is `*`), or an inline command, a line of words split the way
    /// `redis-server` and `redis-cli` split them (`"..."` with `\n`, `\xHH`
    /// and similar escapes, `'...'` with `\'`). Empty lines, blank inline
    /// commands and empty or null arrays are consumed and skipped, as Redis
    /// does. `Ok(None)`: no whole command yet; anything skipped is consumed,
    /// the incomplete command is left in `buf`.
    pub fn decode_command(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CodecError> {
        loop {
            if buf.is_empty() {
                return Ok(None);
            }
            if buf[0] != b'*' {
                let Some(line) = self.inline_line(buf)? else {
                    return Ok(None);
                };
                let args = split_inline(&line)?;
                if args.is_empty() {
                    continue;
                }
                return Ok(Some(Command { args }));
            }
            let Some(end) = self.run_scan(buf, true)? else {
                return Ok(None);
            };
            let data = buf.split_to(end).freeze();
            let args = command_args(&data, &self.limits)?;
            if args.is_empty() {
                continue;
            }
            return Ok(Some(Command { args }));
        }
    }

    /// Cuts one inline line (without its LF and one CR before it) off `buf`.
    fn inline_line(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let from = self.inline_from.min(buf.len());
        match buf[from..].iter().position(|&b| b == b'\n') {
            None => {
                if buf.len() > self.limits.max_inline {
                    self.inline_from = 0;
                    return Err(CodecError::TooLarge {
                        what: "inline command (no newline yet)",
                        len: buf.len(),
                        max: self.limits.max_inline,
                        unit: "bytes",
                    });
                }
                self.inline_from = buf.len();
                Ok(None)
            }
            Some(i) => {
                self.inline_from = 0;
                let nl = from + i;
                if nl > self.limits.max_inline {
                    return Err(CodecError::TooLarge {
                        what: "inline command",
                        len: nl,
                        max: self.limits.max_inline,
                        unit: "bytes",
                    });
                }
                let mut line = buf.split_to(nl + 1).freeze();
                line.truncate(nl);
                if line.last() == Some(&b'\r') {
                    line.truncate(nl - 1);
                }
                Ok(Some(line))
            }
        }
    }

    fn run_scan(&mut self, buf: &BytesMut, command: bool) -> Result<Option<usize>, CodecError> {
        if self.scan.pos > buf.len() || self.scan.command != command {
            self.scan = Scan::default();
        }
        self.scan.command = command;
        match self.scan.run(buf, &self.limits) {
            Ok(None) => Ok(None),
            other => {
                self.scan = Scan::default();
                other
            }
        }
    }
}

/// The arguments of a command array the pre-scan has validated, as slices
/// of `data`, without building the intermediate array value.
fn command_args(data: &Bytes, limits: &Limits) -> Result<Vec<Bytes>, CodecError> {
    let mut pos = 0;
    match build(data, &mut pos, 1, limits)? {
        Value::Array(Some(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::Bulk(Some(b)) => Ok(b),
                other => Err(CodecError::malformed(format!(
                    "internal: command argument is {other:?}"
                ))),
            })
            .collect::<Result<Vec<_>, _>>(),
        _ => Ok(Vec::new()),
    }
}

/// The pre-scan's progress through an incomplete value.
#[derive(Debug, Clone, Default)]
struct Scan {
    /// Offset of the first element not yet fully validated.
    pos: usize,
    /// Where to continue looking for the CRLF of the line at `pos`.
    search_from: usize,
    /// Elements each open aggregate still expects, outermost first.
    stack: Vec<usize>,
    /// Scanning a client command: a top-level array of bulk strings only.
    command: bool,
}

impl Scan {
    /// Validates from `pos` on. `Some(end)`: a whole value occupies
    /// `buf[..end]`. Allocates nothing beyond the stack (≤ `max_depth`).
    fn run(&mut self, buf: &[u8], limits: &Limits) -> Result<Option<usize>, CodecError> {
        loop {
            let pos = self.pos;
            if pos >= buf.len() {
                return Ok(None);
            }
            let ty = buf[pos];
            if self.command {
                let expected = if self.stack.is_empty() { b'*' } else { b'$' };
                if ty != expected {
                    return Err(CodecError::malformed(format!(
                        "expected {} in a command at offset {pos}, got {}",
                        byte_name(expected),
                        byte_name(ty)
                    )));
                }
            }
            check_type(ty, pos)?;
            let from = self.search_from.max(pos + 1);
            let Some(cr) = find_crlf(buf, from)? else {
                let len = buf.len() - pos - 1;
                if len > limits.max_inline {
                    return Err(CodecError::TooLarge {
                        what: "line (no CRLF yet)",
                        len,
                        max: limits.max_inline,
                        unit: "bytes",
                    });
                }
                // A CR at the very end may be half of the CRLF: look at it again.
                self.search_from = (buf.len() - 1).max(pos + 1);
                return Ok(None);
            };
            let line = &buf[pos + 1..cr];
            if line.len() > limits.max_inline {
                return Err(CodecError::TooLarge {
                    what: "line",
                    len: line.len(),
                    max: limits.max_inline,
                    unit: "bytes",
                });
            }
            let next = cr + 2;
            match header(ty, line, pos, limits)? {
                Header::Scalar => {}
                Header::Blob(None) if self.command => {
                    return Err(CodecError::malformed(format!(
                        "null bulk string as a command argument at offset {pos}"
                    )));
                }
                Header::Blob(None) => {}
                Header::Blob(Some(n)) => {
                    let end = blob_end(next, n)?;
                    if buf.len() < end {
                        // Keep `pos` on the header: it is re-read (a few
                        // bytes) when more arrives; the payload is not.
                        self.search_from = cr;
                        return Ok(None);
                    }
                    check_blob(ty, &buf[next..end], pos)?;
                    self.search_from = 0;
                    self.pos = end;
                    if self.complete() {
                        return Ok(Some(end));
                    }
                    continue;
                }
                Header::Aggregate(None) => {}
                Header::Aggregate(Some(n)) => {
                    if ty == b'|' && !self.stack.is_empty() {
                        return Err(CodecError::malformed(format!(
                            "RESP3 attribute inside an aggregate at offset {pos} is not supported"
                        )));
                    }
                    let depth = self.stack.len() + 1;
                    if depth > limits.max_depth {
                        return Err(CodecError::TooDeep {
                            depth,
                            max: limits.max_depth,
                        });
                    }
                    let children = if ty == b'%' || ty == b'|' {
                        n.saturating_mul(2)
                    } else {
                        n
                    };
                    if children > 0 {
                        self.stack.push(children);
                        self.search_from = 0;
                        self.pos = next;
                        continue;
                    }
                }
            }
            self.search_from = 0;
            self.pos = next;
            if self.complete() {
                return Ok(Some(next));
            }
        }
    }

    /// Records that one element ended at `pos`, closing every aggregate it
    /// completes. True when the top-level value is complete.
    fn complete(&mut self) -> bool {
        while let Some(remaining) = self.stack.last_mut() {
            *remaining -= 1;
            if *remaining > 0 {
                return false;
            }
            self.stack.pop();
        }
        true
    }
}

fn check_type(ty: u8, pos: usize) -> Result<(), CodecError> {
    match ty {
        b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'%'
        | b'~' | b'|' | b'>' => Ok(()),
        b';' | b'.' => Err(CodecError::malformed(format!(
            "streamed RESP3 chunk {} at offset {pos} is not supported",
            byte_name(ty)
        ))),
        _ => Err(CodecError::malformed(format!(
            "unknown RESP type byte {} at offset {pos}",
            byte_name(ty)
        ))),
    }
}

/// Finds the CR of the CRLF that ends the line being searched from `from`.
/// `None`: not there yet. A bare LF, or a CR followed by anything but LF, is
/// an error: no RESP line may contain either.
fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, CodecError> {
    let Some(rest) = buf.get(from..) else {
        return Ok(None);
    };
    let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return Ok(None);
    };
    let at = from + i;
    if buf[at] == b'\n' {
        return Err(CodecError::malformed(format!(
            "line feed without a carriage return at offset {at} (missing CRLF)"
        )));
    }
    match buf.get(at + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(at)),
        Some(&b) => Err(CodecError::malformed(format!(
            "carriage return followed by {} instead of a line feed at offset {at} (missing CRLF)",
            byte_name(b)
        ))),
    }
}

/// What a type header says follows it.
enum Header {
    /// Nothing: the line was the whole value.
    Scalar,
    /// A payload of this many bytes and a CRLF; `None` for `$-1`.
    Blob(Option<usize>),
    /// This many elements (entries for maps); `None` for `*-1`.
    Aggregate(Option<usize>),
}

/// Validates a header line (`line` is between the type byte and the CRLF).
fn header(ty: u8, line: &[u8], pos: usize, limits: &Limits) -> Result<Header, CodecError> {
    let bad =
        |what: &str| CodecError::malformed(format!("{} at offset {pos}: {what}", type_name(ty)));
    match ty {
        b'+' | b'-' => Ok(Header::Scalar),
        b':' => parse_i64(line)
            .map(|_| Header::Scalar)
            .ok_or_else(|| bad("not a 64-bit integer")),
        b'_' if line.is_empty() => Ok(Header::Scalar),
        b'_' => Err(bad("null carries data")),
        b'#' if line == b"t" || line == b"f" => Ok(Header::Scalar),
        b'#' => Err(bad("expected t or f")),
        b',' if !line.is_empty() => Ok(Header::Scalar),
        b',' => Err(bad("empty")),
        b'(' if is_big_number(line) => Ok(Header::Scalar),
        b'(' => Err(bad("not an integer")),
        b'$' | b'!' | b'=' => {
            let Some(n) = parse_len(ty, line, ty == b'$', pos)? else {
                return Ok(Header::Blob(None));
            };
            if n > limits.max_bulk {
                return Err(CodecError::TooLarge {
                    what: type_name(ty),
                    len: n,
                    max: limits.max_bulk,
                    unit: "bytes",
                });
            }
            Ok(Header::Blob(Some(n)))
        }
        _ => {
            let Some(n) = parse_len(ty, line, ty == b'*', pos)? else {
                return Ok(Header::Aggregate(None));
            };
            if n > limits.max_elements {
                return Err(CodecError::TooLarge {
                    what: type_name(ty),
                    len: n,
                    max: limits.max_elements,
                    unit: if ty == b'%' || ty == b'|' {
                        "entries"
                    } else {
                        "elements"
                    },
                });
            }
            Ok(Header::Aggregate(Some(n)))
        }
    }
}

/// A length or count: decimal digits only, or `-1` where RESP2 allows null.
fn parse_len(ty: u8, line: &[u8], null_ok: bool, pos: usize) -> Result<Option<usize>, CodecError> {
    if line == b"-1" && null_ok {
        return Ok(None);
    }
    let bad = |what: &str| {
        CodecError::malformed(format!(
            "{} at offset {pos} has length {:?}: {what}",
            type_name(ty),
            String::from_utf8_lossy(&line[..line.len().min(32)])
        ))
    };
    if line == b"?" {
        return Err(bad("streamed RESP3 values are not supported"));
    }
    if line.first() == Some(&b'-') {
        return Err(bad(if null_ok {
            "negative, and only -1 (null) is allowed"
        } else {
            "negative"
        }));
    }
    if line.is_empty() || !line.iter().all(u8::is_ascii_digit) {
        return Err(bad("not a decimal number"));
    }
    let mut n: usize = 0;
    for &d in line {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or_else(|| bad("does not fit in memory"))?;
    }
    Ok(Some(n))
}

/// A strict `i64`: optional `-` or `+`, then one or more digits.
fn parse_i64(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.first()? {
        b'-' => (true, &line[1..]),
        b'+' => (false, &line[1..]),
        _ => (false, line),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        n = n.checked_mul(10)?;
        n = if neg {
            n.checked_sub(d)?
        } else {
            n.checked_add(d)?
        };
    }
    Some(n)
}

fn is_big_number(line: &[u8]) -> bool {
    let digits = match line.first() {
        Some(b'-') | Some(b'+') => &line[1..],
        _ => line,
    };
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

fn blob_end(start: usize, n: usize) -> Result<usize, CodecError> {
    start
        .checked_add(n)
        .and_then(|e| e.checked_add(2))
        .ok_or_else(|| CodecError::malformed("length overflows"))
}

/// `payload_crlf` is the payload followed by what must be its CRLF.
fn check_blob(ty: u8, payload_crlf: &[u8], pos: usize) -> Result<(), CodecError> {
    let n = payload_crlf.len() - 2;
    if &payload_crlf[n..] != b"\r\n" {
        return Err(CodecError::malformed(format!(
            "{} at offset {pos} declares {n} bytes but is not followed by CRLF \
             (wrong length or trailing garbage)",
            type_name(ty)
        )));
    }
    if ty == b'=' && (n < 4 || payload_crlf[3] != b':') {
        return Err(CodecError::malformed(format!(
            "verbatim string at offset {pos} does not start with a 3-character format and ':'"
        )));
    }
    Ok(())
}

/// Builds the value at `*pos` of `data`, which the pre-scan has validated.
/// It validates again (cheaply, with the same functions) rather than trust
/// the scan, so an inconsistency is an error, not a panic.
fn build(
    data: &Bytes,
    pos: &mut usize,
    depth: usize,
    limits: &Limits,
) -> Result<Value, CodecError> {
    let start = *pos;
    let ty = *data
        .get(start)
        .ok_or_else(|| CodecError::malformed("internal: value ends early"))?;
    check_type(ty, start)?;
    let cr = find_crlf(data, start + 1)?
        .ok_or_else(|| CodecError::malformed("internal: header ends early"))?;
    let line = data.slice(start + 1..cr);
    let next = cr + 2;
    *pos = next;
    let value = match header(ty, &line, start, limits)? {
        Header::Scalar => match ty {
            b'+' => Value::Simple(line),
            b'-' => Value::Error(line),
            b':' => Value::Integer(parse_i64(&line).unwrap_or_default()),
            b'_' => Value::Null,
            b'#' => Value::Boolean(&line[..] == b"t"),
            b',' => Value::Double(line),
            _ => Value::BigNumber(line),
        },
        Header::Blob(None) => Value::Bulk(None),
        Header::Blob(Some(n)) => {
            let end = blob_end(next, n)?;
            let chunk = data
                .get(next..end)
                .ok_or_else(|| CodecError::malformed("internal: payload ends early"))?;
            check_blob(ty, chunk, start)?;
            *pos = end;
            let payload = data.slice(next..next + n);
            match ty {
                b'$' => Value::Bulk(Some(payload)),
                b'!' => Value::BulkError(payload),
                _ => Value::Verbatim(payload),
            }
        }
        Header::Aggregate(None) => Value::Array(None),
        Header::Aggregate(Some(n)) => {
            if depth > limits.max_depth {
                return Err(CodecError::TooDeep {
                    depth,
                    max: limits.max_depth,
                });
            }
            if ty == b'%' || ty == b'|' {
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = build(data, pos, depth + 1, limits)?;
                    let v = build(data, pos, depth + 1, limits)?;
                    pairs.push((k, v));
                }
                if ty == b'%' {
                    Value::Map(pairs)
                } else {
                    Value::Attribute(pairs)
                }
            } else {
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(build(data, pos, depth + 1, limits)?);
                }
                match ty {
                    b'*' => Value::Array(Some(items)),
                    b'~' => Value::Set(items),
                    _ => Value::Push(items),
                }
            }
        }
    };
    Ok(value)
}

/// Splits an inline command line into arguments exactly as Redis's
/// `sdssplitargs` does, so the proxy and the server see the same words:
/// - words are separated by whitespace;
/// - `"..."` understands `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<c>`
///   for any other `c`;
/// - `'...'` understands only `\'`;
/// - a quote may open in the middle of a word (`a"b c"` is `ab c`), but a
///   closing quote must be followed by whitespace or the end;
/// - an unterminated quote is an error.
///
/// A NUL is refused: Redis would stop reading the line there, and the proxy
/// must not check a different command from the one the server runs.
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, CodecError> {
    fn c_space(b: u8) -> bool {
        matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
    }
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    if line.contains(&0) {
        return Err(CodecError::malformed(
            "NUL byte in an inline command".to_string(),
        ));
    }
    let unbalanced = || CodecError::malformed("unbalanced quotes in inline command");
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && c_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut word = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let c = line.get(p).copied();
            if in_double {
                match c {
                    None => return Err(unbalanced()),
                    Some(b'\\') => {
                        let hi = line.get(p + 2).copied().and_then(hex);
                        let lo = line.get(p + 3).copied().and_then(hex);
                        match (line.get(p + 1), hi, lo) {
                            (Some(b'x'), Some(hi), Some(lo)) => {
                                word.push(hi * 16 + lo);
                                p += 3;
                            }
                            (Some(&e), _, _) => {
                                word.push(match e {
                                    b'n' => b'\n',
                                    b'r' => b'\r',
                                    b't' => b'\t',
                                    b'b' => 0x08,
                                    b'a' => 0x07,
                                    other => other,
                                });
                                p += 1;
                            }
                            (None, _, _) => return Err(unbalanced()),
                        }
                    }
                    Some(b'"') => {
                        if line.get(p + 1).is_some_and(|&b| !c_space(b)) {
                            return Err(unbalanced());
                        }
                        p += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else if in_single {
                match c {
                    None => return Err(unbalanced()),
                    Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                        word.push(b'\'');
                        p += 1;
                    }
                    Some(b'\'') => {
                        if line.get(p + 1).is_some_and(|&b| !c_space(b)) {
                            return Err(unbalanced());
                        }
                        p += 1;
                        break;
                    }
                    Some(b) => word.push(b),
                }
            } else {
                match c {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(b) => word.push(b),
                }
            }
            p += 1;
        }
        args.push(Bytes::from(word));
    }
}
