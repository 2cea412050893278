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

/// Commands whose only key is the first argument.
const FIRST_KEY: &[&str] = &[
    "GET", "SET", "GETEX", "GETDEL", "HGET", "HSET", "HMGET", "HGETALL", "HVALS", "HKEYS",
    "LRANGE", "LPUSH", "RPUSH", "SMEMBERS", "SADD", "ZRANGE", "ZADD", "XRANGE", "XADD", "INCR",
    "DECR", "EXPIRE", "TTL", "TYPE", "DUMP", "RESTORE", "APPEND", "GETRANGE", "SETRANGE", "STRLEN",
];

fn upper_lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

impl Command {
    /// The command name, upper-cased (Redis matches names case-blind);
    /// invalid UTF-8 is replaced, so it can never match a real command.
    /// `""` when there are no arguments.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| upper_lossy(a))
            .unwrap_or_default()
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

    /// Indices into `args` of the keys, for the common data commands.
    /// Unknown commands give an empty list: callers that must be safe treat
    /// that as "keys unknown", not "no keys".
    pub fn keys(&self) -> Vec<usize> {
        let name = self.name();
        let n = self.args.len();
        match name.as_str() {
            "MGET" | "DEL" | "EXISTS" => (1..n).collect(),
            "MSET" => (1..n).step_by(2).collect(),
            "RENAME" | "COPY" => (1..n.min(3)).collect(),
            s if FIRST_KEY.contains(&s) => (1..n.min(2)).collect(),
            _ => Vec::new(),
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
            let mut pos = 0;
            let args = match build(&data, &mut pos, 1, &self.limits)? {
                Value::Array(Some(items)) => items
                    .into_iter()
                    .map(|item| match item {
                        Value::Bulk(Some(b)) => Ok(b),
                        other => Err(CodecError::malformed(format!(
                            "internal: command argument is {other:?}"
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => Vec::new(),
            };
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
