//! Framing for the PostgreSQL v3 wire protocol, and the small toolkit the
//! typed messages share.
//!
//! The proxy reads raw bytes from two sockets into `BytesMut` buffers. The
//! decoders here cut those buffers into whole messages ([`Frame`]s) without
//! copying: a frame's body is a slice of the bytes that came off the socket.
//! Typed parsing ([`Message::parse`]) slices further, so a `Query`'s SQL or a
//! `DataRow`'s column values still point into the same allocation.
//!
//! Two rules hold everywhere, because the peer is not trusted:
//! - every length is checked against what is actually there and against a
//!   limit chosen by the caller, before anything is allocated for it;
//! - no input panics. A bad message is a [`CodecError`] that ends its
//!   session with a clear reason, never the daemon.
//!
//! Parsing is as strict as PostgreSQL's own (`pq_getmsgend`): bytes left over
//! after the last field are an error. A lenient proxy would be a policy
//! bypass, since the proxy and the server would read different statements
//! out of the same message.

use std::fmt;
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};

/// Largest message accepted from a client unless the caller says otherwise.
/// Large enough for any realistic statement or bound parameter, small enough
/// that a hostile task cannot make the daemon buffer a gigabyte.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Largest message accepted from a server unless the caller says otherwise.
/// A single value may be up to 1 GiB in PostgreSQL, so a `DataRow` can be too.
pub const DEFAULT_MAX_BACKEND_MESSAGE: usize = 1024 * 1024 * 1024;

/// Largest startup-phase message. PostgreSQL itself refuses startup packets
/// over 10 000 bytes (`MAX_STARTUP_PACKET_LENGTH`), so nothing legitimate is
/// larger.
pub const MAX_STARTUP_MESSAGE: usize = 10_000;

/// Most a decoder reserves ahead for an incomplete message. Reserving the
/// whole declared length would let five bytes from a peer pin `max` bytes of
/// memory; beyond this the buffer grows only as data actually arrives.
pub const MAX_RESERVE: usize = 256 * 1024;

/// StartupMessage protocol code for 3.0. Minor versions above 0 (3.2 since
/// PostgreSQL 18) use the same layout and are accepted too.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Request code of `SSLRequest`.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Request code of `GSSENCRequest`.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// Request code of `CancelRequest`.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// The one-byte answer to `SSLRequest`/`GSSENCRequest` that accepts it.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';
/// The one-byte answer to `SSLRequest`/`GSSENCRequest` that refuses it.
pub const ENCRYPTION_REFUSED: u8 = b'N';

/// Longest cancel key PostgreSQL 18 (protocol 3.2) may send.
pub const MAX_CANCEL_KEY: usize = 256;

/// Why a message could not be decoded. Waiting for more bytes is not an
/// error: the decoders return `Ok(None)` for that.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The declared length is over the limit. Reported before the body is
    /// buffered, so the limit bounds memory per session.
    #[error(
        "PostgreSQL message {} declares {len} bytes, over the limit of {max} bytes; \
         the peer is not speaking the protocol or the message really is that large",
        tag_name(*tag)
    )]
    TooLarge {
        tag: Option<u8>,
        len: usize,
        max: usize,
    },
    /// The message breaks the protocol: a short length, a missing NUL, a
    /// count that runs past the end, invalid UTF-8, trailing bytes.
    #[error("malformed PostgreSQL {what} message: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// The first message of a connection carries a request code this proxy
    /// does not know (protocol 2.0 clients, or not PostgreSQL at all).
    #[error(
        "unsupported PostgreSQL startup request code {0} (protocol {major}.{minor}); \
         only protocol 3, SSLRequest, GSSENCRequest and CancelRequest are accepted",
        major = .0 >> 16,
        minor = .0 & 0xffff
    )]
    UnknownStartupCode(u32),
}

impl CodecError {
    /// The ErrorResponse to send a client before closing its session: FATAL,
    /// SQLSTATE 08P01 (protocol_violation), this error as the message.
    pub fn to_error_response(&self) -> Bytes {
        super::backend::error_response("FATAL", "08P01", &self.to_string())
    }

    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        CodecError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}

/// How a tag appears in operator-facing messages: `'Q'` when printable.
pub fn tag_name(tag: Option<u8>) -> String {
    match tag {
        None => "(startup)".to_string(),
        Some(t) if t.is_ascii_graphic() => format!("'{}'", t as char),
        Some(t) => format!("0x{t:02x}"),
    }
}

/// One whole protocol message: the tag (absent for startup-phase messages)
/// and the body after the length word, a slice of the received bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: Option<u8>,
    pub body: Bytes,
}

impl fmt::Debug for Frame {
    // Bodies may hold passwords and row values: print only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("tag", &tag_name(self.tag))
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl Frame {
    /// The bytes that precede the body on the wire (tag, if any, and the
    /// length including itself). Writing `header()` then `body` forwards a
    /// message unchanged without copying the body.
    pub fn header(&self) -> ([u8; 5], usize) {
        let len = wire_len(self.body.len());
        let mut out = [0u8; 5];
        match self.tag {
            Some(tag) => {
                out[0] = tag;
                out[1..5].copy_from_slice(&len.to_be_bytes());
                (out, 5)
            }
            None => {
                out[0..4].copy_from_slice(&len.to_be_bytes());
                (out, 4)
            }
        }
    }

    /// The whole message as it goes on the wire (copies the body).
    pub fn to_bytes(&self) -> Bytes {
        let (header, n) = self.header();
        let mut out = BytesMut::with_capacity(n + self.body.len());
        out.put_slice(&header[..n]);
        out.put_slice(&self.body);
        out.freeze()
    }
}

/// The length word for a body of `body_len` bytes. Bodies built by this
/// crate are bounded by the decode limits (≤ 1 GiB), far below `u32::MAX`;
/// saturating keeps `to_bytes` infallible without wrapping silently.
fn wire_len(body_len: usize) -> u32 {
    u32::try_from(body_len.saturating_add(4)).unwrap_or(u32::MAX)
}

/// Whether the first byte of a connection starts a TLS handshake record
/// rather than a startup message: PostgreSQL 17 "direct TLS" clients
/// (`sslnegotiation=direct`) send a ClientHello straight away. A startup
/// length never starts with 0x16 because it is below 16 MiB.
pub fn is_direct_tls(first_byte: u8) -> bool {
    first_byte == 0x16
}

/// Cuts one tagged message (`tag`, `i32` length including itself, body) off
/// the front of `buf`.
///
/// `Ok(None)` means the message is not complete yet; `buf` is left as it was
/// (with room reserved for more of it, up to [`MAX_RESERVE`]).
/// A length over `max` is refused as soon as the header is in, before the
/// body is buffered.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(CodecError::malformed(
            "message",
            format!(
                "message {} declares length {len}, below the minimum of 4",
                tag_name(Some(tag))
            ),
        ));
    }
    // `len` is positive here, so the cast is lossless.
    let len = len as usize;
    if len > max {
        return Err(CodecError::TooLarge {
            tag: Some(tag),
            len,
            max,
        });
    }
    let total = len + 1;
    if buf.len() < total {
        buf.reserve((total - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let mut message = buf.split_to(total).freeze();
    let body = message.split_off(5);
    Ok(Some(Frame {
        tag: Some(tag),
        body,
    }))
}

/// What a client may send as the first message of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupFrame {
    /// A StartupMessage: the session starts.
    Startup(super::frontend::Startup),
    /// The client asks for TLS; answer one byte ([`ENCRYPTION_ACCEPTED`] or
    /// [`ENCRYPTION_REFUSED`]) and then decode the next startup message.
    /// Any bytes already buffered after this request arrived before the
    /// answer and must be refused, not read as plaintext (CVE-2021-23214):
    /// check that the buffer is empty before the handshake.
    SslRequest,
    /// The client asks for GSSAPI encryption; the proxy answers `N`.
    GssEncRequest,
    /// Out-of-band request to cancel a running query of another session.
    CancelRequest(super::frontend::CancelRequest),
}

impl StartupFrame {
    /// The message as it goes on the wire.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            StartupFrame::Startup(s) => s.to_bytes(),
            StartupFrame::SslRequest => encode_untagged(|out| out.put_u32(SSL_REQUEST_CODE)),
            StartupFrame::GssEncRequest => encode_untagged(|out| out.put_u32(GSSENC_REQUEST_CODE)),
            StartupFrame::CancelRequest(c) => c.to_bytes(),
        }
    }
}

/// Cuts the first message of a connection (`i32` length including itself,
/// `u32` request code, body; no tag) off the front of `buf` and recognises
/// it. `Ok(None)` means more bytes are needed.
///
/// `max` bounds the length; [`MAX_STARTUP_MESSAGE`] matches PostgreSQL.
pub fn decode_startup(buf: &mut BytesMut, max: usize) -> Result<Option<StartupFrame>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(CodecError::malformed(
            "startup",
            format!("declares length {len}, below the minimum of 8 (length and request code)"),
        ));
    }
    let len = len as usize;
    if len > max {
        return Err(CodecError::TooLarge {
            tag: None,
            len,
            max,
        });
    }
    if buf.len() < len {
        buf.reserve((len - buf.len()).min(MAX_RESERVE));
        return Ok(None);
    }
    let mut message = buf.split_to(len).freeze();
    let body = message.split_off(4);
    let frame = Frame { tag: None, body };
    let code = u32::from_be_bytes([frame.body[0], frame.body[1], frame.body[2], frame.body[3]]);
    let decoded = match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if frame.body.len() != 4 {
                return Err(CodecError::malformed(
                    if code == SSL_REQUEST_CODE {
                        "SSLRequest"
                    } else {
                        "GSSENCRequest"
                    },
                    format!("length {len}, expected exactly 8"),
                ));
            }
            if code == SSL_REQUEST_CODE {
                StartupFrame::SslRequest
            } else {
                StartupFrame::GssEncRequest
            }
        }
        CANCEL_REQUEST_CODE => {
            StartupFrame::CancelRequest(super::frontend::CancelRequest::parse(&frame)?)
        }
        c if c >> 16 == 3 => StartupFrame::Startup(super::frontend::Startup::parse(&frame)?),
        other => return Err(CodecError::UnknownStartupCode(other)),
    };
    Ok(Some(decoded))
}

/// A string read from the wire: valid UTF-8, no NUL, and still a slice of the
/// received bytes. Dereferences to `&str`.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PgStr(Bytes);

impl PgStr {
    /// Wraps bytes after checking they are UTF-8 (no copy).
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(PgStr(bytes))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks UTF-8 (`from_utf8`) or starts from
        // a `str`, and the bytes are immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Deref for PgStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for PgStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for PgStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&'static str> for PgStr {
    fn from(s: &'static str) -> Self {
        PgStr(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for PgStr {
    fn from(s: String) -> Self {
        PgStr(Bytes::from(s))
    }
}

impl PartialEq<str> for PgStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for PgStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Text or binary, for parameters, result columns and COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Format {
    #[default]
    Text,
    Binary,
}

impl Format {
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    /// PostgreSQL rejects any other code ("unsupported format code"), so the
    /// proxy does too rather than guess how to read the value.
    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// A typed tagged message. `parse` reads a [`Frame`] (checking its tag);
/// `to_bytes` writes the whole message, tag and length included.
pub trait Message: Sized {
    /// The message type byte.
    const TAG: u8;
    /// The name PostgreSQL's documentation uses, for error messages.
    const NAME: &'static str;

    /// Reads the body (everything after the length word).
    fn decode_body(body: &Bytes) -> Result<Self, CodecError>;

    /// Appends the body to `out`.
    fn encode_body(&self, out: &mut BytesMut);

    fn parse(frame: &Frame) -> Result<Self, CodecError> {
        if frame.tag != Some(Self::TAG) {
            return Err(CodecError::malformed(
                Self::NAME,
                format!(
                    "frame has tag {}, expected {}",
                    tag_name(frame.tag),
                    tag_name(Some(Self::TAG))
                ),
            ));
        }
        Self::decode_body(&frame.body)
    }

    fn to_bytes(&self) -> Bytes {
        encode(Self::TAG, |out| self.encode_body(out))
    }
}

/// Writes a tagged message: tag, length placeholder, body, then the length.
pub(crate) fn encode(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(tag);
    out.put_u32(0);
    body(&mut out);
    let len = wire_len(out.len() - 5);
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Writes an untagged (startup-phase) message.
pub(crate) fn encode_untagged(body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u32(0);
    body(&mut out);
    let len = wire_len(out.len() - 4);
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out.freeze()
}

/// Writes a NUL-terminated string. A NUL inside `s` would end the field early
/// and let the rest be read as further fields, so the string is cut there.
pub(crate) fn put_cstr(out: &mut BytesMut, s: &str) {
    put_cstr_bytes(out, s.as_bytes());
}

/// [`put_cstr`] of a string [`Reader::cstr_keep`] read: its own bytes when
/// it kept them (not UTF-8), else its text.
pub(crate) fn put_cstr_kept(out: &mut BytesMut, text: &str, raw: Option<&Bytes>) {
    put_cstr_bytes(out, raw.map_or(text.as_bytes(), |b| &b[..]));
}

fn put_cstr_bytes(out: &mut BytesMut, bytes: &[u8]) {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    out.put_slice(&bytes[..end]);
    out.put_u8(0);
}

/// Writes a length-prefixed value, `-1` for NULL.
pub(crate) fn put_value(out: &mut BytesMut, value: Option<&Bytes>) {
    match value {
        None => out.put_i32(-1),
        Some(v) => {
            out.put_u32(wire_len(v.len()) - 4);
            out.put_slice(v);
        }
    }
}

/// Writes a `u16` count. Counts come from decoded messages (so they fit) or
/// from the proxy's own builders; saturating keeps encoding infallible.
pub(crate) fn put_count(out: &mut BytesMut, n: usize) {
    out.put_u16(u16::try_from(n).unwrap_or(u16::MAX));
}

/// Reads fields off a message body in order, slicing rather than copying,
/// and turns every shortfall into a `Malformed` error that names the message
/// and the field.
pub(crate) struct Reader<'a> {
    body: &'a Bytes,
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(what: &'static str, body: &'a Bytes) -> Self {
        Reader { body, pos: 0, what }
    }

    pub(crate) fn err(&self, detail: impl Into<String>) -> CodecError {
        CodecError::malformed(self.what, detail)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N], CodecError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.body.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "field `{field}` needs {N} bytes, only {} left",
                self.remaining()
            )));
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.body[self.pos..end]);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, CodecError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn i16(&mut self, field: &str) -> Result<i16, CodecError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, CodecError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &str) -> Result<i32, CodecError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, CodecError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// The next `n` bytes, as a slice of the body.
    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<Bytes, CodecError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.body.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "field `{field}` declares {n} bytes, only {} left",
                self.remaining()
            )));
        };
        let out = self.body.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        let out = self.body.slice(self.pos..);
        self.pos = self.body.len();
        out
    }

    /// A NUL-terminated string, and whether it was UTF-8: if not, its
    /// text with every invalid sequence replaced by U+FFFD (for a session
    /// whose client_encoding is not UTF8; the bytes themselves are
    /// forwarded from the frame, never from this text).
    pub(crate) fn cstr_lossy(&mut self, field: &str) -> Result<(PgStr, bool), CodecError> {
        let Some(nul) = self.body[self.pos..].iter().position(|&b| b == 0) else {
            return Err(self.err(format!("field `{field}` is missing its NUL terminator")));
        };
        let bytes = self.body.slice(self.pos..self.pos + nul);
        self.pos += nul + 1;
        Ok(match PgStr::from_utf8(bytes.clone()) {
            Ok(s) => (s, true),
            Err(_) => (
                PgStr::from(String::from_utf8_lossy(&bytes).into_owned()),
                false,
            ),
        })
    }

    /// [`Reader::cstr_lossy`], with the string's own bytes when they are
    /// not UTF-8 (to be sent on as they came).
    pub(crate) fn cstr_keep(&mut self, field: &str) -> Result<(PgStr, Option<Bytes>), CodecError> {
        let start = self.pos;
        let (text, utf8) = self.cstr_lossy(field)?;
        let raw = (!utf8).then(|| self.body.slice(start..self.pos - 1));
        Ok((text, raw))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self, field: &str) -> Result<PgStr, CodecError> {
        let Some(nul) = self.body[self.pos..].iter().position(|&b| b == 0) else {
            return Err(self.err(format!("field `{field}` is missing its NUL terminator")));
        };
        let bytes = self.body.slice(self.pos..self.pos + nul);
        self.pos += nul + 1;
        PgStr::from_utf8(bytes).map_err(|e| {
            self.err(format!(
                "field `{field}` is not valid UTF-8 ({e}); the proxy only reads UTF-8 \
                 (client_encoding UTF8)"
            ))
        })
    }

    /// A value with an `i32` length prefix, `-1` meaning NULL.
    pub(crate) fn value(&mut self, field: &str, index: usize) -> Result<Option<Bytes>, CodecError> {
        let len = self.i32(field)?;
        match len {
            -1 => Ok(None),
            n if n < 0 => Err(self.err(format!(
                "field `{field}[{index}]` has length {n}; only -1 (NULL) may be negative"
            ))),
            n => {
                let n = n as usize;
                if n > self.remaining() {
                    return Err(self.err(format!(
                        "field `{field}[{index}]` declares {n} bytes, only {} left",
                        self.remaining()
                    )));
                }
                self.take(n, field).map(Some)
            }
        }
    }

    /// `count` format codes, each 0 (text) or 1 (binary).
    pub(crate) fn formats(&mut self, count: usize, field: &str) -> Result<Vec<Format>, CodecError> {
        if count.saturating_mul(2) > self.remaining() {
            return Err(self.err(format!(
                "field `{field}` declares {count} format codes, only {} bytes left",
                self.remaining()
            )));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let code = self.i16(field)?;
            let format = Format::from_code(code).ok_or_else(|| {
                self.err(format!(
                    "field `{field}` has format code {code}; only 0 (text) and 1 (binary) exist"
                ))
            })?;
            out.push(format);
        }
        Ok(out)
    }

    /// Fails if bytes are left over: PostgreSQL rejects such messages, so
    /// the proxy must not accept something the server would read otherwise.
    pub(crate) fn finish(self) -> Result<(), CodecError> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(self.err(format!(
                "{} unexpected bytes after the last field",
                self.remaining()
            )))
        }
    }
}
