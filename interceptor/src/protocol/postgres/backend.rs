//! Messages a server sends: what the session relays (auth, parameters,
//! transaction state) and what masking and audit read (row descriptions,
//! rows, command tags, errors and notices), plus the few messages the proxy
//! writes itself.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::{
    encode, put_count, put_cstr, put_cstr_kept, put_value, CodecError, Format, Frame, Message,
    PgStr, Reader, MAX_CANCEL_KEY,
};
use super::frontend::{empty_message, message_enum, CopyData, CopyDone};

/// The SASL mechanism that binds SCRAM to the TLS channel. It cannot survive
/// TLS termination (the client's channel is not the server's), so the proxy
/// removes it from what the server offers.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Authentication ('R'): a request from the server, or its verdict.
#[derive(Clone, PartialEq, Eq)]
pub enum Authentication {
    /// 0: authenticated.
    Ok,
    /// 2: Kerberos V5, long unsupported by PostgreSQL.
    KerberosV5,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send md5(md5(password || user) || salt).
    Md5Password { salt: [u8; 4] },
    /// 7: start GSSAPI.
    Gss,
    /// 8: GSSAPI continuation data.
    GssContinue { data: Bytes },
    /// 9: SSPI.
    Sspi,
    /// 10: choose one of these SASL mechanisms.
    Sasl { mechanisms: Vec<PgStr> },
    /// 11: SCRAM server-first-message.
    SaslContinue { data: Bytes },
    /// 12: SCRAM server-final-message.
    SaslFinal { data: Bytes },
    /// Any other request code, kept as is.
    Other { code: i32, data: Bytes },
}

impl fmt::Debug for Authentication {
    // Salts and SCRAM exchanges are not secrets, but they are noise in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authentication::Ok => f.write_str("AuthenticationOk"),
            Authentication::KerberosV5 => f.write_str("AuthenticationKerberosV5"),
            Authentication::CleartextPassword => f.write_str("AuthenticationCleartextPassword"),
            Authentication::Md5Password { .. } => f.write_str("AuthenticationMD5Password"),
            Authentication::Gss => f.write_str("AuthenticationGSS"),
            Authentication::GssContinue { data } => {
                write!(f, "AuthenticationGSSContinue(<{} bytes>)", data.len())
            }
            Authentication::Sspi => f.write_str("AuthenticationSSPI"),
            Authentication::Sasl { mechanisms } => f
                .debug_tuple("AuthenticationSASL")
                .field(mechanisms)
                .finish(),
            Authentication::SaslContinue { data } => {
                write!(f, "AuthenticationSASLContinue(<{} bytes>)", data.len())
            }
            Authentication::SaslFinal { data } => {
                write!(f, "AuthenticationSASLFinal(<{} bytes>)", data.len())
            }
            Authentication::Other { code, data } => {
                write!(f, "Authentication({code}, <{} bytes>)", data.len())
            }
        }
    }
}

impl Authentication {
    pub fn code(&self) -> i32 {
        match self {
            Authentication::Ok => 0,
            Authentication::KerberosV5 => 2,
            Authentication::CleartextPassword => 3,
            Authentication::Md5Password { .. } => 5,
            Authentication::Gss => 7,
            Authentication::GssContinue { .. } => 8,
            Authentication::Sspi => 9,
            Authentication::Sasl { .. } => 10,
            Authentication::SaslContinue { .. } => 11,
            Authentication::SaslFinal { .. } => 12,
            Authentication::Other { code, .. } => *code,
        }
    }

    /// The same message with `SCRAM-SHA-256-PLUS` removed from an
    /// AuthenticationSASL list; any other message is returned unchanged.
    /// If nothing is left the server only accepts channel binding, which
    /// cannot work through the proxy: the session should say so.
    pub fn without_channel_binding(&self) -> Authentication {
        match self {
            Authentication::Sasl { mechanisms } => Authentication::Sasl {
                mechanisms: mechanisms
                    .iter()
                    .filter(|m| m.as_str() != SCRAM_SHA_256_PLUS)
                    .cloned()
                    .collect(),
            },
            other => other.clone(),
        }
    }
}

impl Message for Authentication {
    const TAG: u8 = b'R';
    const NAME: &'static str = "Authentication";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let code = r.i32("request code")?;
        let message = match code {
            0 => Authentication::Ok,
            2 => Authentication::KerberosV5,
            3 => Authentication::CleartextPassword,
            5 => {
                let salt = r.take(4, "salt")?;
                Authentication::Md5Password {
                    salt: [salt[0], salt[1], salt[2], salt[3]],
                }
            }
            7 => Authentication::Gss,
            8 => Authentication::GssContinue { data: r.rest() },
            9 => Authentication::Sspi,
            10 => {
                let mut mechanisms = Vec::new();
                loop {
                    let m = r.cstr("mechanism")?;
                    if m.is_empty() {
                        break;
                    }
                    mechanisms.push(m);
                }
                Authentication::Sasl { mechanisms }
            }
            11 => Authentication::SaslContinue { data: r.rest() },
            12 => Authentication::SaslFinal { data: r.rest() },
            code => Authentication::Other {
                code,
                data: r.rest(),
            },
        };
        r.finish()?;
        Ok(message)
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.code());
        match self {
            Authentication::Md5Password { salt } => out.put_slice(salt),
            Authentication::GssContinue { data }
            | Authentication::SaslContinue { data }
            | Authentication::SaslFinal { data }
            | Authentication::Other { data, .. } => out.put_slice(data),
            Authentication::Sasl { mechanisms } => {
                for m in mechanisms {
                    put_cstr(out, m);
                }
                out.put_u8(0);
            }
            Authentication::Ok
            | Authentication::KerberosV5
            | Authentication::CleartextPassword
            | Authentication::Gss
            | Authentication::Sspi => {}
        }
    }
}

/// Rewrites an Authentication frame for the client: AuthenticationSASL loses
/// `SCRAM-SHA-256-PLUS` (libpq's default `channel_binding=prefer` then uses
/// plain SCRAM-SHA-256); any other authentication message is re-encoded
/// unchanged.
pub fn strip_channel_binding(frame: &Frame) -> Result<Bytes, CodecError> {
    Ok(Authentication::parse(frame)?
        .without_channel_binding()
        .to_bytes())
}

/// ParameterStatus ('S'): a run-time parameter's current value
/// (`server_version`, `client_encoding`, `DateStyle`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterStatus {
    pub name: PgStr,
    pub value: PgStr,
}

impl Message for ParameterStatus {
    const TAG: u8 = b'S';
    const NAME: &'static str = "ParameterStatus";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let name = r.cstr("name")?;
        let value = r.cstr("value")?;
        r.finish()?;
        Ok(ParameterStatus { name, value })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.name);
        put_cstr(out, &self.value);
    }
}

/// BackendKeyData ('K'): the (pid, secret key) a client quotes in a later
/// CancelRequest. The proxy must remember which server it came from to relay
/// cancels to the right one.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendKeyData {
    pub pid: i32,
    /// 4 bytes in protocol 3.0, up to 256 in 3.2.
    pub secret_key: Bytes,
}

impl fmt::Debug for BackendKeyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendKeyData")
            .field("pid", &self.pid)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

impl Message for BackendKeyData {
    const TAG: u8 = b'K';
    const NAME: &'static str = "BackendKeyData";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let pid = r.i32("process id")?;
        let secret_key = r.rest();
        if secret_key.len() < 4 || secret_key.len() > MAX_CANCEL_KEY {
            return Err(r.err(format!(
                "secret key of {} bytes; expected 4 to {MAX_CANCEL_KEY}",
                secret_key.len()
            )));
        }
        Ok(BackendKeyData { pid, secret_key })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.pid);
        out.put_slice(&self.secret_key);
    }
}

/// The transaction state ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block; statements are refused until it
    /// ends.
    Failed,
}

impl TransactionStatus {
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// ReadyForQuery ('Z'): the server waits for the next query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyForQuery {
    pub status: TransactionStatus,
}

impl Message for ReadyForQuery {
    const TAG: u8 = b'Z';
    const NAME: &'static str = "ReadyForQuery";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let status = match r.u8("status")? {
            b'I' => TransactionStatus::Idle,
            b'T' => TransactionStatus::InTransaction,
            b'E' => TransactionStatus::Failed,
            other => {
                return Err(r.err(format!(
                    "status byte 0x{other:02x}; expected 'I', 'T' or 'E'"
                )))
            }
        };
        r.finish()?;
        Ok(ReadyForQuery { status })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_u8(self.status.byte());
    }
}

/// One result column. `table_oid`/`column_attr` are 0 unless the column is
/// a plain reference to a table column: masking by (table, attribute) uses
/// them, masking by name uses `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The column name as text. In a session whose client_encoding is not
    /// UTF8 a name can be other bytes: then this is their text with each
    /// invalid sequence replaced by U+FFFD (what masking by name sees), and
    /// `raw_name` holds the bytes, which are what is sent on.
    pub name: PgStr,
    /// The name's bytes when they are not UTF-8; `None` otherwise.
    pub raw_name: Option<Bytes>,
    pub table_oid: u32,
    pub column_attr: i16,
    pub type_oid: u32,
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: Format,
}

/// RowDescription ('T'): the columns of the rows that follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDescription {
    pub fields: Vec<Field>,
}

impl Message for RowDescription {
    const TAG: u8 = b'T';
    const NAME: &'static str = "RowDescription";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let count = r.u16("field count")? as usize;
        // Each field is at least 19 bytes (empty name + fixed part).
        if count.saturating_mul(19) > r.remaining() {
            return Err(r.err(format!(
                "declares {count} fields, only {} bytes left",
                r.remaining()
            )));
        }
        let mut fields = Vec::with_capacity(count);
        for _ in 0..count {
            let (name, raw_name) = r.cstr_keep("field name")?;
            let table_oid = r.u32("table oid")?;
            let column_attr = r.i16("column attribute number")?;
            let type_oid = r.u32("type oid")?;
            let type_size = r.i16("type size")?;
            let type_modifier = r.i32("type modifier")?;
            let format = r.formats(1, "format")?[0];
            fields.push(Field {
                name,
                raw_name,
                table_oid,
                column_attr,
                type_oid,
                type_size,
                type_modifier,
                format,
            });
        }
        r.finish()?;
        Ok(RowDescription { fields })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_count(out, self.fields.len());
        for f in &self.fields {
            put_cstr_kept(out, &f.name, f.raw_name.as_ref());
            out.put_u32(f.table_oid);
            out.put_i16(f.column_attr);
            out.put_u32(f.type_oid);
            out.put_i16(f.type_size);
            out.put_i32(f.type_modifier);
            out.put_i16(f.format.code());
        }
    }
}

/// DataRow ('D'): one row; each column a slice of the received frame, `None`
/// for NULL.
#[derive(Clone, PartialEq, Eq)]
pub struct DataRow {
    pub columns: Vec<Option<Bytes>>,
}

impl fmt::Debug for DataRow {
    // Row values are what masking protects: never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.columns.iter().map(|v| match v {
                None => "NULL".to_string(),
                Some(b) => format!("<{} bytes>", b.len()),
            }))
            .finish()
    }
}

impl Message for DataRow {
    const TAG: u8 = b'D';
    const NAME: &'static str = "DataRow";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let count = r.u16("column count")? as usize;
        if count.saturating_mul(4) > r.remaining() {
            return Err(r.err(format!(
                "declares {count} columns, only {} bytes left",
                r.remaining()
            )));
        }
        let mut columns = Vec::with_capacity(count);
        for i in 0..count {
            columns.push(r.value("columns", i)?);
        }
        r.finish()?;
        Ok(DataRow { columns })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_count(out, self.columns.len());
        for c in &self.columns {
            put_value(out, c.as_ref());
        }
    }
}

/// CommandComplete ('C'): a statement finished; the tag names it and, for
/// most, counts rows (`SELECT 5`, `INSERT 0 1`, `UPDATE 3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandComplete {
    pub tag: PgStr,
}

impl CommandComplete {
    /// The row count at the end of the tag, when the tag has one.
    pub fn rows(&self) -> Option<u64> {
        let (head, last) = self.tag.rsplit_once(' ')?;
        if head.is_empty() {
            return None;
        }
        last.parse().ok()
    }
}

impl Message for CommandComplete {
    const TAG: u8 = b'C';
    const NAME: &'static str = "CommandComplete";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let tag = r.cstr("command tag")?;
        r.finish()?;
        Ok(CommandComplete { tag })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_cstr(out, &self.tag);
    }
}

/// Field codes of ErrorResponse and NoticeResponse the proxy uses.
pub mod field {
    /// Severity, localized.
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6+).
    pub const SEVERITY_NONLOCALIZED: u8 = b'V';
    /// SQLSTATE code.
    pub const CODE: u8 = b'C';
    /// Primary message.
    pub const MESSAGE: u8 = b'M';
    /// Detail, which may echo row values (masking must see it).
    pub const DETAIL: u8 = b'D';
    pub const HINT: u8 = b'H';
    pub const WHERE: u8 = b'W';
}

/// The fields, and the bytes of those that were not UTF-8 (by index).
type ReadFields = (Vec<(u8, PgStr)>, Vec<(usize, Bytes)>);

fn read_fields(r: &mut Reader<'_>) -> Result<ReadFields, CodecError> {
    let mut fields = Vec::new();
    let mut raw = Vec::new();
    loop {
        let code = r.u8("field type")?;
        if code == 0 {
            return Ok((fields, raw));
        }
        // In a client_encoding other than UTF8 a message can carry other
        // bytes (a relation name, a localized message): read as text with
        // invalid sequences replaced. An error the proxy does not rewrite
        // is sent on as the frame it came in.
        let (value, bytes) = r.cstr_keep("field value")?;
        if let Some(bytes) = bytes {
            raw.push((fields.len(), bytes));
        }
        fields.push((code, value));
    }
}

fn write_fields(out: &mut BytesMut, fields: &[(u8, PgStr)], raw: &[(usize, Bytes)]) {
    for (i, (code, value)) in fields.iter().enumerate() {
        // A zero code would end the list early; PostgreSQL never sends one.
        if *code != 0 {
            out.put_u8(*code);
            let kept = raw.iter().find(|(at, _)| *at == i).map(|(_, b)| b);
            put_cstr_kept(out, value, kept);
        }
    }
    out.put_u8(0);
}

/// Declares ErrorResponse and NoticeResponse, which share a layout.
macro_rules! field_message {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            /// (field code, value) in the order sent; see [`field`]. A
            /// value that was not UTF-8 (another client_encoding) is its
            /// text with invalid sequences replaced...
            pub fields: Vec<(u8, PgStr)>,
            /// ...and its bytes are here, by index into `fields`: what is
            /// sent on when the message is encoded again.
            pub raw: Vec<(usize, Bytes)>,
        }

        impl $name {
            /// The first value of a field.
            pub fn field(&self, code: u8) -> Option<&str> {
                self.fields
                    .iter()
                    .find(|(c, _)| *c == code)
                    .map(|(_, v)| v.as_str())
            }

            pub fn sqlstate(&self) -> Option<&str> {
                self.field(field::CODE)
            }

            pub fn message(&self) -> Option<&str> {
                self.field(field::MESSAGE)
            }

            /// The non-localized severity when sent, else the localized one.
            pub fn severity(&self) -> Option<&str> {
                self.field(field::SEVERITY_NONLOCALIZED)
                    .or_else(|| self.field(field::SEVERITY))
            }
        }

        impl Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
                let mut r = Reader::new(Self::NAME, body);
                let (fields, raw) = read_fields(&mut r)?;
                r.finish()?;
                Ok($name { fields, raw })
            }

            fn encode_body(&self, out: &mut BytesMut) {
                write_fields(out, &self.fields, &self.raw);
            }
        }
    };
}

field_message!(
    /// ErrorResponse ('E'): the statement failed.
    ErrorResponse,
    b'E'
);
field_message!(
    /// NoticeResponse ('N'): a warning or notice; the session goes on.
    NoticeResponse,
    b'N'
);

/// ParameterDescription ('t'): the parameter types of a prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParameterDescription {
    pub types: Vec<u32>,
}

impl Message for ParameterDescription {
    const TAG: u8 = b't';
    const NAME: &'static str = "ParameterDescription";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let count = r.u16("parameter count")? as usize;
        if count * 4 > r.remaining() {
            return Err(r.err(format!(
                "declares {count} parameter types, only {} bytes left",
                r.remaining()
            )));
        }
        let mut types = Vec::with_capacity(count);
        for _ in 0..count {
            types.push(r.u32("parameter type")?);
        }
        r.finish()?;
        Ok(ParameterDescription { types })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_count(out, self.types.len());
        for t in &self.types {
            out.put_u32(*t);
        }
    }
}

empty_message!(
    /// NoData ('n'): the described statement or portal returns no rows.
    NoData,
    b'n'
);
empty_message!(
    /// ParseComplete ('1').
    ParseComplete,
    b'1'
);
empty_message!(
    /// BindComplete ('2').
    BindComplete,
    b'2'
);
empty_message!(
    /// CloseComplete ('3').
    CloseComplete,
    b'3'
);
empty_message!(
    /// PortalSuspended ('s'): Execute reached its row limit.
    PortalSuspended,
    b's'
);
empty_message!(
    /// EmptyQueryResponse ('I'): the query string was empty.
    EmptyQueryResponse,
    b'I'
);

/// Declares the three COPY responses, which share a layout.
macro_rules! copy_response {
    ($(#[$doc:meta])* $name:ident, $tag:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            /// Overall format: text (columns all text) or binary.
            pub format: Format,
            pub column_formats: Vec<Format>,
        }

        impl Message for $name {
            const TAG: u8 = $tag;
            const NAME: &'static str = stringify!($name);

            fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
                let mut r = Reader::new(Self::NAME, body);
                let code = r.u8("format")?;
                let format = Format::from_code(i16::from(code)).ok_or_else(|| {
                    r.err(format!("overall format {code}; expected 0 (text) or 1 (binary)"))
                })?;
                let count = r.u16("column count")? as usize;
                let column_formats = r.formats(count, "column formats")?;
                r.finish()?;
                Ok($name {
                    format,
                    column_formats,
                })
            }

            fn encode_body(&self, out: &mut BytesMut) {
                // Codes are 0 or 1, so the narrowing is exact.
                out.put_u8(self.format.code() as u8);
                put_count(out, self.column_formats.len());
                for f in &self.column_formats {
                    out.put_i16(f.code());
                }
            }
        }
    };
}

copy_response!(
    /// CopyInResponse ('G'): the server waits for COPY FROM STDIN data.
    CopyInResponse,
    b'G'
);
copy_response!(
    /// CopyOutResponse ('H'): COPY TO STDOUT data follows. Its rows bypass
    /// RowDescription, which is why masking denies COPY of masked tables.
    CopyOutResponse,
    b'H'
);
copy_response!(
    /// CopyBothResponse ('W'): streaming replication.
    CopyBothResponse,
    b'W'
);

/// NotificationResponse ('A'): a NOTIFY on a channel this session listens to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationResponse {
    pub pid: i32,
    /// Channel and payload as text (invalid sequences replaced when they
    /// are not UTF-8: another client_encoding)...
    pub channel: PgStr,
    pub payload: PgStr,
    /// ...and then their bytes, sent on when the message is encoded again.
    pub channel_raw: Option<Bytes>,
    pub payload_raw: Option<Bytes>,
}

impl Message for NotificationResponse {
    const TAG: u8 = b'A';
    const NAME: &'static str = "NotificationResponse";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let pid = r.i32("process id")?;
        let (channel, channel_raw) = r.cstr_keep("channel")?;
        let (payload, payload_raw) = r.cstr_keep("payload")?;
        r.finish()?;
        Ok(NotificationResponse {
            pid,
            channel,
            payload,
            channel_raw,
            payload_raw,
        })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.pid);
        put_cstr_kept(out, &self.channel, self.channel_raw.as_ref());
        put_cstr_kept(out, &self.payload, self.payload_raw.as_ref());
    }
}

/// NegotiateProtocolVersion ('v'): the server supports an older minor
/// version than asked, or not some `_pq_.` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiateProtocolVersion {
    pub newest_minor: i32,
    pub unrecognized: Vec<PgStr>,
}

impl Message for NegotiateProtocolVersion {
    const TAG: u8 = b'v';
    const NAME: &'static str = "NegotiateProtocolVersion";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let newest_minor = r.i32("newest minor version")?;
        let count = r.i32("option count")?;
        let count = usize::try_from(count)
            .ok()
            .filter(|&c| c <= r.remaining())
            .ok_or_else(|| {
                r.err(format!(
                    "declares {count} options, only {} bytes left",
                    r.remaining()
                ))
            })?;
        let mut unrecognized = Vec::with_capacity(count);
        for _ in 0..count {
            unrecognized.push(r.cstr("option")?);
        }
        r.finish()?;
        Ok(NegotiateProtocolVersion {
            newest_minor,
            unrecognized,
        })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        out.put_i32(self.newest_minor);
        out.put_i32(i32::try_from(self.unrecognized.len()).unwrap_or(i32::MAX));
        for o in &self.unrecognized {
            put_cstr(out, o);
        }
    }
}

/// FunctionCallResponse ('V'): the result of a FunctionCall.
#[derive(Clone, PartialEq, Eq)]
pub struct FunctionCallResponse {
    pub value: Option<Bytes>,
}

impl fmt::Debug for FunctionCallResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FunctionCallResponse({:?})",
            self.value.as_ref().map(|v| format!("<{} bytes>", v.len()))
        )
    }
}

impl Message for FunctionCallResponse {
    const TAG: u8 = b'V';
    const NAME: &'static str = "FunctionCallResponse";

    fn decode_body(body: &Bytes) -> Result<Self, CodecError> {
        let mut r = Reader::new(Self::NAME, body);
        let value = r.value("result", 0)?;
        r.finish()?;
        Ok(FunctionCallResponse { value })
    }

    fn encode_body(&self, out: &mut BytesMut) {
        put_value(out, self.value.as_ref());
    }
}

message_enum!(
    /// Any message a server sends after the startup-phase byte answers.
    BackendMessage,
    "backend",
    {
        Authentication,
        ParameterStatus,
        BackendKeyData,
        ReadyForQuery,
        RowDescription,
        DataRow,
        CommandComplete,
        ErrorResponse,
        NoticeResponse,
        ParameterDescription,
        NoData,
        ParseComplete,
        BindComplete,
        CloseComplete,
        PortalSuspended,
        EmptyQueryResponse,
        CopyInResponse,
        CopyOutResponse,
        CopyBothResponse,
        CopyData,
        CopyDone,
        NotificationResponse,
        NegotiateProtocolVersion,
        FunctionCallResponse,
    }
);

/// An ErrorResponse written by the proxy (a denial, a protocol violation).
/// `severity` is `ERROR` (the session goes on) or `FATAL` (it ends); it is
/// sent both localized (S) and not (V) since the proxy does not localize.
pub fn error_response(severity: &str, sqlstate: &str, message: &str) -> Bytes {
    encode(ErrorResponse::TAG, |out| {
        out.put_u8(field::SEVERITY);
        put_cstr(out, severity);
        out.put_u8(field::SEVERITY_NONLOCALIZED);
        put_cstr(out, severity);
        out.put_u8(field::CODE);
        put_cstr(out, sqlstate);
        out.put_u8(field::MESSAGE);
        put_cstr(out, message);
        out.put_u8(0);
    })
}

/// A ReadyForQuery written by the proxy, e.g. after answering a denied
/// simple query itself.
pub fn ready_for_query(status: TransactionStatus) -> Bytes {
    ReadyForQuery { status }.to_bytes()
}
