//! Messages a client sends: what the policy reads (statements, bound
//! parameters, portals) and what the session relays (auth, COPY).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{
    encode_untagged, put_count, put_cstr, put_value, CodecError, Format, Frame, Message, PgStr,
    Reader, CANCEL_REQUEST_CODE, MAX_CANCEL_KEY, PROTOCOL_3_0,
};

/// StartupMessage: protocol version and connection parameters (`user`,
/// `database`, `application_name`, `options`, `_pq_.*` extensions...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// `major << 16 | minor`; 3.0 is [`PROTOCOL_3_0`].
    pub protocol: u32,
    pub params: Vec<(PgStr, PgStr)>,
}

impl Startup {
    /// A protocol 3.0 startup with these parameters.
    pub fn new(params: Vec<(PgStr, PgStr)>) -> Self {
        Startup {
            protocol: PROTOCOL_3_0,
            params,
        }
    }

    /// Reads a startup-phase frame whose body starts with the protocol code.
    pub fn parse(frame: &Frame) -> Result<Self, CodecError> {
        let mut r = Reader::new("StartupMessage", &frame.body);
        if frame.tag.is_some() {
            return Err(r.err("a tagged frame is not a startup message"));
        }
        let protocol = r.u32("protocol")?;
        if protocol >> 16 != 3 {
            return Err(CodecError::UnknownStartupCode(protocol));
        }
        let mut params = Vec::new();
        loop {
            let name = r.cstr("parameter name")?;
            if name.is_empty() {
                break;
            }
            let value = r.cstr(&name)?;
            params.push((name, value));
        }
        r.finish()?;
        Ok(Startup { protocol, params })
    }

    pub fn to_bytes(&self) -> Bytes {
        encode_untagged(|out| {
            out.put_u32(self.protocol);
            for (name, value) in &self.params {
                put_cstr(out, name);
                put_cstr(out, value);
            }
            out.put_u8(0);
        })
    }

    /// The first value of a parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// The database user; PostgreSQL refuses a startup without one.
    pub fn user(&self) -> Option<&str> {
        self.param("user")
    }

    /// The database, which PostgreSQL defaults to the user name.
    pub fn database(&self) -> Option<&str> {
        self.param("database").or_else(|| self.user())
    }
}

/// CancelRequest: sent on a fresh connection, identifies the session to
/// cancel by the (pid, secret key) its server announced in BackendKeyData.
#[derive(Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    /// 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelRequest")
            .field("pid", &self.pid)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl CancelRequest {
    pub fn parse(frame: &Frame) -> Result<Self, CodecError> {
        let mut r = Reader::new("CancelRequest", &frame.body);
        if frame.tag.is_some() {
            return Err(r.err("a tagged frame is not a cancel request"));
        }
        let code = r.u32("request code")?;
        if code != CANCEL_REQUEST_CODE {
            return Err(r.err(format!(
                "request code {code}, expected {CANCEL_REQUEST_CODE}"
            )));
        }
        let pid = r.i32("process id")?;
        let secret_key = r.rest();
        if secret_key.len() < 4 || secret_key.len() > MAX_CANCEL_KEY {
            return Err(r.err(format!(
                "secret key of {} bytes; expected 4 to {MAX_CANCEL_KEY}",
                secret_key.len()
            )));
        }
        Ok(CancelRequest { pid, secret_key })
    }

    pub fn to_bytes(&self) -> Bytes {
        encode_untagged(|out| {
            out.put_u32(CANCEL_REQUEST_CODE);
            out.put_i32(self.pid);
            out.put_slice(&self.secret_key);
        })
    }
}

/// Query ('Q'): one simple-protocol query string, which may hold several
/// statements separated by semicolons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sql: PgStr,
}

impl Message for Query {
    const TAG: u8 = b'Q';
    const NAME: &'static str = "Query";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let sql = r.cstr("query")?;
        r.finish()?;
        Ok(Query { sql })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.sql);
    }
}

impl Query {
    /// [`Message::parse`], except that SQL text that is not UTF-8 (a session
    /// in another client_encoding) is not an error: the text comes back
    /// with invalid bytes replaced, and `false`.
    pub fn parse_any_encoding(frame: &Frame) -> Result<(Query, bool), CodecError> {
        let error = match Query::parse(frame) {
            Ok(q) => return Ok((q, true)),
            Err(e) => e,
        };
        let mut r = Reader::new(Self::NAME, &frame.body);
        match r.cstr_lossy("query") {
            Ok((sql, false)) if r.finish().is_ok() => Ok((Query { sql }, false)),
            _ => Err(error),
        }
    }
}

/// Parse ('P'): prepares one statement under `name` (empty = unnamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    pub name: PgStr,
    pub sql: PgStr,
    /// Declared parameter type OIDs; 0 leaves a type to the server.
    pub param_types: Vec<u32>,
}

impl Message for Parse {
    const TAG: u8 = b'P';
    const NAME: &'static str = "Parse";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let name = r.cstr("statement name")?;
        let sql = r.cstr("query")?;
        let count = r.u16("parameter type count")? as usize;
        if count * 4 > r.remaining() {
            return Err(r.err(format!(
                "declares {count} parameter types, only {} bytes left",
                r.remaining()
            )));
        }
        let mut param_types = Vec::with_capacity(count);
        for _ in 0..count {
            param_types.push(r.u32("parameter type")?);
        }
        r.finish()?;
        Ok(Parse {
            name,
            sql,
            param_types,
        })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.name);
        put_cstr(out, &self.sql);
        put_count(out, self.param_types.len());
        for oid in &self.param_types {
            out.put_u32(*oid);
        }
    }
}

impl Parse {
    /// [`Message::parse`], except that SQL text that is not UTF-8 is not an
    /// error (see [`Query::parse_any_encoding`]); the statement name must
    /// still be UTF-8.
    pub fn parse_any_encoding(frame: &Frame) -> Result<(Parse, bool), CodecError> {
        let error = match Parse::parse(frame) {
            Ok(p) => return Ok((p, true)),
            Err(e) => e,
        };
        let mut r = Reader::new(Self::NAME, &frame.body);
        let Ok(name) = r.cstr("statement name") else {
            return Err(error);
        };
        let Ok((sql, false)) = r.cstr_lossy("query") else {
            return Err(error);
        };
        // The rest is as valid as Parse::parse found it, or not: decode it
        // again behind a UTF-8 stand-in for the text.
        let mut body = BytesMut::new();
        put_cstr(&mut body, &name);
        put_cstr(&mut body, "");
        body.extend_from_slice(&r.rest());
        let rest = Parse::decode_body(&body.freeze()).map_err(|_| error)?;
        Ok((
            Parse {
                name,
                sql,
                param_types: rest.param_types,
            },
            false,
        ))
    }
}

/// Reads `count` length-prefixed values, refusing before allocating if they
/// cannot possibly fit (each needs at least its 4-byte length).
fn read_values(
    r: &mut Reader<'_>,
    count: usize,
    field: &str,
) -> Result<Vec<Option<Bytes>>, CodecError> {
    if count * 4 > r.remaining() {
        return Err(r.err(format!(
            "declares {count} `{field}` values, only {} bytes left",
            r.remaining()
        )));
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        out.push(r.value(field, i)?);
    }
    Ok(out)
}

/// The format of value `index` under PostgreSQL's rule: no codes = all text,
/// one code = all values, otherwise one code per value.
pub(crate) fn format_of(formats: &[Format], index: usize) -> Format {
    match formats {
        [] => Format::Text,
        [one] => *one,
        many => many.get(index).copied().unwrap_or_default(),
    }
}

/// Prints values by size only: they may be secrets.
struct Sizes<'a>(&'a [Option<Bytes>]);

impl fmt::Debug for Sizes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|v| match v {
                None => "NULL".to_string(),
                Some(b) => format!("<{} bytes>", b.len()),
            }))
            .finish()
    }
}

/// Bind ('B'): binds parameter values to a prepared statement, creating a
/// portal (empty name = unnamed).
#[derive(Clone, PartialEq, Eq)]
pub struct Bind {
    pub portal: PgStr,
    pub statement: PgStr,
    pub param_formats: Vec<Format>,
    /// `None` is SQL NULL.
    pub params: Vec<Option<Bytes>>,
    pub result_formats: Vec<Format>,
}

impl fmt::Debug for Bind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bind")
            .field("portal", &self.portal)
            .field("statement", &self.statement)
            .field("param_formats", &self.param_formats)
            .field("params", &Sizes(&self.params))
            .field("result_formats", &self.result_formats)
            .finish()
    }
}

impl Bind {
    /// The format parameter `index` is sent in.
    pub fn param_format(&self, index: usize) -> Format {
        format_of(&self.param_formats, index)
    }
}

impl Message for Bind {
    const TAG: u8 = b'B';
    const NAME: &'static str = "Bind";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let portal = r.cstr("portal")?;
        let statement = r.cstr("statement")?;
        let n = r.u16("parameter format count")? as usize;
        let param_formats = r.formats(n, "parameter formats")?;
        let n = r.u16("parameter count")? as usize;
        let params = read_values(&mut r, n, "parameters")?;
        if param_formats.len() > 1 && param_formats.len() != params.len() {
            return Err(r.err(format!(
                "{} parameter formats for {} parameters; expected 0, 1 or one per parameter",
                param_formats.len(),
                params.len()
            )));
        }
        let n = r.u16("result format count")? as usize;
        let result_formats = r.formats(n, "result formats")?;
        r.finish()?;
        Ok(Bind {
            portal,
            statement,
            param_formats,
            params,
            result_formats,
        })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.portal);
        put_cstr(out, &self.statement);
        put_count(out, self.param_formats.len());
        for f in &self.param_formats {
            out.put_i16(f.code());
        }
        put_count(out, self.params.len());
        for p in &self.params {
            put_value(out, p.as_ref());
        }
        put_count(out, self.result_formats.len());
        for f in &self.result_formats {
            out.put_i16(f.code());
        }
    }
}

/// What Describe and Close refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// 'S': a prepared statement.
    Statement,
    /// 'P': a portal.
    Portal,
}

impl Target {
    fn read(r: &mut Reader<'_>) -> Result<Self, CodecError> {
        match r.u8("kind")? {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            other => Err(r.err(format!(
                "kind byte 0x{other:02x}; expected 'S' (statement) or 'P' (portal)"
            ))),
        }
    }

    fn byte(self) -> u8 {
        match self {
            Target::Statement => b'S',
            Target::Portal => b'P',
        }
    }
}

/// Describe ('D'): asks for a statement's parameters and result columns, or a
/// portal's result columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Describe {
    pub kind: Target,
    pub name: PgStr,
}

impl Message for Describe {
    const TAG: u8 = b'D';
    const NAME: &'static str = "Describe";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let kind = Target::read(&mut r)?;
        let name = r.cstr("name")?;
        r.finish()?;
        Ok(Describe { kind, name })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.kind.byte());
        put_cstr(out, &self.name);
    }
}

/// Close ('C'): drops a prepared statement or portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub kind: Target,
    pub name: PgStr,
}

impl Message for Close {
    const TAG: u8 = b'C';
    const NAME: &'static str = "Close";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let kind = Target::read(&mut r)?;
        let name = r.cstr("name")?;
        r.finish()?;
        Ok(Close { kind, name })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.kind.byte());
        put_cstr(out, &self.name);
    }
}

/// Execute ('E'): runs a portal; `max_rows` 0 means all rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub portal: PgStr,
    pub max_rows: i32,
}

impl Message for Execute {
    const TAG: u8 = b'E';
    const NAME: &'static str = "Execute";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let portal = r.cstr("portal")?;
        let max_rows = r.i32("max rows")?;
        r.finish()?;
        Ok(Execute { portal, max_rows })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.portal);
        out.put_i32(self.max_rows);
    }
}

/// Declares a message with an empty body.
macro_rules! empty_message {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct $name;

        impl Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
                Reader::new(Self::NAME, body).finish()?;
                Ok($name)
            }

            fn encode_body(&self, _out: &mut BytesMut) {}
        }
    };
}
pub(crate) use empty_message;

empty_message!(
    /// Sync ('S'): ends an extended-protocol batch; the server answers
    /// ReadyForQuery, and after an error skips everything up to here.
    Sync,
    b'S'
);
empty_message!(
    /// Flush ('H'): asks the server to send what it has buffered.
    Flush,
    b'H'
);
empty_message!(
    /// Terminate ('X'): the client is leaving.
    Terminate,
    b'X'
);
empty_message!(
    /// CopyDone ('c', both directions): the end of a COPY data stream.
    CopyDone,
    b'c'
);

/// CopyData ('d', both directions): a chunk of a COPY stream, opaque.
#[derive(Clone, PartialEq, Eq)]
pub struct CopyData {
    pub data: Bytes,
}

impl fmt::Debug for CopyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CopyData(<{} bytes>)", self.data.len())
    }
}

impl Message for CopyData {
    const TAG: u8 = b'd';
    const NAME: &'static str = "CopyData";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        Ok(CopyData { data: body.clone() })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_slice(&self.data);
    }
}

/// CopyFail ('f'): the client aborts COPY FROM STDIN with a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFail {
    pub message: PgStr,
}

impl Message for CopyFail {
    const TAG: u8 = b'f';
    const NAME: &'static str = "CopyFail";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let message = r.cstr("message")?;
        r.finish()?;
        Ok(CopyFail { message })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.message);
    }
}

/// FunctionCall ('F'): the legacy fast-path call of a function by OID. It
/// bypasses SQL entirely, which is why the policy refuses it by default.
#[derive(Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub function_oid: u32,
    pub arg_formats: Vec<Format>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: Format,
}

impl fmt::Debug for FunctionCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FunctionCall")
            .field("function_oid", &self.function_oid)
            .field("arg_formats", &self.arg_formats)
            .field("args", &Sizes(&self.args))
            .field("result_format", &self.result_format)
            .finish()
    }
}

impl Message for FunctionCall {
    const TAG: u8 = b'F';
    const NAME: &'static str = "FunctionCall";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let function_oid = r.u32("function oid")?;
        let n = r.u16("argument format count")? as usize;
        let arg_formats = r.formats(n, "argument formats")?;
        let n = r.u16("argument count")? as usize;
        let args = read_values(&mut r, n, "arguments")?;
        if arg_formats.len() > 1 && arg_formats.len() != args.len() {
            return Err(r.err(format!(
                "{} argument formats for {} arguments; expected 0, 1 or one per argument",
                arg_formats.len(),
                args.len()
            )));
        }
        let result_format = r.formats(1, "result format")?[0];
        r.finish()?;
        Ok(FunctionCall {
            function_oid,
            arg_formats,
            args,
            result_format,
        })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u32(self.function_oid);
        put_count(out, self.arg_formats.len());
        for f in &self.arg_formats {
            out.put_i16(f.code());
        }
        put_count(out, self.args.len());
        for a in &self.args {
            put_value(out, a.as_ref());
        }
        out.put_i16(self.result_format.code());
    }
}

/// 'p': PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse.
/// The tag is shared; which one it is depends on the authentication request
/// the server sent last, so the body stays opaque and the session reads it
/// with the helper that matches its state. It carries credentials: it is
/// relayed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    pub body: Bytes,
}

impl fmt::Debug for PasswordMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordMessage(<{} bytes redacted>)", self.body.len())
    }
}

/// The first SCRAM message: the mechanism the client chose and its
/// client-first-message (absent if the length is -1).
#[derive(Clone, PartialEq, Eq)]
pub struct SaslInitialResponse {
    pub mechanism: PgStr,
    pub data: Option<Bytes>,
}

impl fmt::Debug for SaslInitialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslInitialResponse")
            .field("mechanism", &self.mechanism)
            .field("data_len", &self.data.as_ref().map(|d| d.len()))
            .finish()
    }
}

impl SaslInitialResponse {
    pub fn to_bytes(&self) -> Bytes {
        super::codec::encode(PasswordMessage::TAG, |out| {
            put_cstr(out, &self.mechanism);
            put_value(out, self.data.as_ref());
        })
    }
}

impl PasswordMessage {
    /// Reads the body as a cleartext or MD5 password (one C string). Not
    /// required to be UTF-8: passwords are bytes to PostgreSQL.
    pub fn password(&self) -> Result<Bytes, CodecError> {
        let what = "PasswordMessage";
        let Some(nul) = self.body.iter().position(|&b| b == 0) else {
            return Err(CodecError::malformed(
                what,
                "field `password` is missing its NUL terminator",
            ));
        };
        if nul + 1 != self.body.len() {
            return Err(CodecError::malformed(
                what,
                "unexpected bytes after the password",
            ));
        }
        Ok(self.body.slice(..nul))
    }

    /// Reads the body as SASLInitialResponse, after AuthenticationSASL.
    pub fn sasl_initial_response(&self) -> Result<SaslInitialResponse, CodecError> {
        let mut r = Reader::new("SASLInitialResponse", &self.body);
        let mechanism = r.cstr("mechanism")?;
        let data = r.value("data", 0)?;
        r.finish()?;
        Ok(SaslInitialResponse { mechanism, data })
    }

    /// SASLResponse and GSSResponse bodies are the mechanism's data as is.
    pub fn sasl_response(&self) -> &Bytes {
        &self.body
    }
}

impl Message for PasswordMessage {
    const TAG: u8 = b'p';
    const NAME: &'static str = "PasswordMessage";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        Ok(PasswordMessage { body: body.clone() })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_slice(&self.body);
    }
}

/// Declares a direction's message enum with dispatch by tag.
macro_rules! message_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal, { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $($variant($variant)),*
        }

        impl $name {
            /// Reads a frame by its tag. An unknown tag is an error: a
            /// message the proxy cannot read is a message it cannot check.
            pub fn parse(frame: &Frame) -> Result<Self, CodecError> {
                match frame.tag {
                    $(Some(t) if t == <$variant as Message>::TAG => {
                        <$variant as Message>::decode_body(&frame.body).map($name::$variant)
                    })*
                    other => Err(CodecError::malformed(
                        $what,
                        format!(
                            "unknown message type {}",
                            super::codec::tag_name(other)
                        ),
                    )),
                }
            }

            pub fn to_bytes(&self) -> Bytes {
                match self {
                    $($name::$variant(m) => m.to_bytes()),*
                }
            }

            pub fn tag(&self) -> u8 {
                match self {
                    $($name::$variant(_) => <$variant as Message>::TAG),*
                }
            }

            /// The documented name, for logs and audit events.
            pub fn name(&self) -> &'static str {
                match self {
                    $($name::$variant(_) => <$variant as Message>::NAME),*
                }
            }
        }

        $(impl From<$variant> for $name {
            fn from(m: $variant) -> Self {
                $name::$variant(m)
            }
        })*
    };
}
pub(crate) use message_enum;

message_enum!(
    /// Any message a client sends after startup.
    FrontendMessage,
    "frontend",
    {
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Sync,
        Flush,
        Close,
        Terminate,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
        PasswordMessage,
    }
);
