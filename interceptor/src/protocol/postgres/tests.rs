//! Codec tests: every message round trips, streams decode the same however
//! they are split, and no input (malformed, truncated, random) panics.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};

use super::backend::*;
use super::codec::*;
use super::frontend::*;

/// Deterministic xorshift64*, so fuzz failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn one_frame(bytes: &Bytes) -> Frame {
    let mut buf = BytesMut::from(&bytes[..]);
    let frame = decode_frame(&mut buf, DEFAULT_MAX_MESSAGE)
        .expect("valid frame")
        .expect("complete frame");
    assert!(buf.is_empty(), "one message, nothing left over");
    frame
}

/// Encodes, frames, parses and re-encodes `m`, checking each step agrees.
fn round_trip<M: Message + PartialEq + Debug>(m: M) -> Bytes {
    let bytes = m.to_bytes();
    let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    assert_eq!(declared + 1, bytes.len(), "{} length word", M::NAME);
    let frame = one_frame(&bytes);
    assert_eq!(frame.tag, Some(M::TAG));
    assert_eq!(frame.to_bytes(), bytes);
    let (header, n) = frame.header();
    assert_eq!([&header[..n], &frame.body[..]].concat(), bytes.to_vec());
    let parsed = M::parse(&frame).expect("parses");
    assert_eq!(parsed, m, "{}", M::NAME);
    assert_eq!(parsed.to_bytes(), bytes);
    bytes
}

fn frontend_rt<M>(m: M)
where
    M: Message + PartialEq + Debug + Clone + Into<FrontendMessage>,
{
    let bytes = round_trip(m.clone());
    let any = FrontendMessage::parse(&one_frame(&bytes)).expect("dispatches");
    assert_eq!(any, m.into());
    assert_eq!(any.to_bytes(), bytes);
}

fn backend_rt<M>(m: M)
where
    M: Message + PartialEq + Debug + Clone + Into<BackendMessage>,
{
    let bytes = round_trip(m.clone());
    let any = BackendMessage::parse(&one_frame(&bytes)).expect("dispatches");
    assert_eq!(any, m.into());
    assert_eq!(any.to_bytes(), bytes);
}

fn bytes(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn sample_bind() -> Bind {
    Bind {
        portal: "p1".into(),
        statement: "s1".into(),
        param_formats: vec![Format::Text, Format::Binary, Format::Text],
        params: vec![Some(bytes(b"42")), Some(bytes(b"\x00\x01\xff")), None],
        result_formats: vec![Format::Binary],
    }
}

fn frontend_samples() -> Vec<FrontendMessage> {
    vec![
        Query {
            sql: "SELECT 1; SELECT 'é'".into(),
        }
        .into(),
        Query { sql: "".into() }.into(),
        Parse {
            name: "".into(),
            sql: "SELECT $1::int, $2".into(),
            param_types: vec![23, 0],
        }
        .into(),
        sample_bind().into(),
        Bind {
            portal: "".into(),
            statement: "".into(),
            param_formats: vec![],
            params: vec![],
            result_formats: vec![],
        }
        .into(),
        Describe {
            kind: Target::Statement,
            name: "s1".into(),
        }
        .into(),
        Describe {
            kind: Target::Portal,
            name: "".into(),
        }
        .into(),
        Execute {
            portal: "".into(),
            max_rows: 0,
        }
        .into(),
        Execute {
            portal: "p1".into(),
            max_rows: 100,
        }
        .into(),
        Sync.into(),
        Flush.into(),
        Close {
            kind: Target::Portal,
            name: "p1".into(),
        }
        .into(),
        Close {
            kind: Target::Statement,
            name: "s1".into(),
        }
        .into(),
        CopyData {
            data: bytes(b"1\tfoo\n2\tbar\n"),
        }
        .into(),
        CopyDone.into(),
        CopyFail {
            message: "aborted by user".into(),
        }
        .into(),
        FunctionCall {
            function_oid: 1598,
            arg_formats: vec![Format::Binary],
            args: vec![Some(bytes(b"\x00\x00\x00\x01")), None],
            result_format: Format::Binary,
        }
        .into(),
        PasswordMessage {
            body: bytes(b"md5abc\0"),
        }
        .into(),
        Terminate.into(),
    ]
}

fn backend_samples() -> Vec<BackendMessage> {
    vec![
        Authentication::Ok.into(),
        Authentication::CleartextPassword.into(),
        Authentication::KerberosV5.into(),
        Authentication::Md5Password {
            salt: [1, 2, 3, 0xff],
        }
        .into(),
        Authentication::Gss.into(),
        Authentication::GssContinue {
            data: bytes(b"gss"),
        }
        .into(),
        Authentication::Sspi.into(),
        Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
        }
        .into(),
        Authentication::SaslContinue {
            data: bytes(b"r=abc,s=c2FsdA==,i=4096"),
        }
        .into(),
        Authentication::SaslFinal {
            data: bytes(b"v=xyz"),
        }
        .into(),
        Authentication::Other {
            code: 99,
            data: bytes(b"??"),
        }
        .into(),
        ParameterStatus {
            name: "server_version".into(),
            value: "17.2".into(),
        }
        .into(),
        BackendKeyData {
            pid: 4242,
            secret_key: bytes(b"\x01\x02\x03\x04"),
        }
        .into(),
        BackendKeyData {
            pid: 7,
            secret_key: Bytes::from(vec![9u8; 32]),
        }
        .into(),
        ReadyForQuery {
            status: TransactionStatus::Idle,
        }
        .into(),
        ReadyForQuery {
            status: TransactionStatus::InTransaction,
        }
        .into(),
        ReadyForQuery {
            status: TransactionStatus::Failed,
        }
        .into(),
        RowDescription {
            fields: vec![
                Field {
                    name: "id".into(),
                    raw_name: None,
                    table_oid: 16384,
                    column_attr: 1,
                    type_oid: 23,
                    type_size: 4,
                    type_modifier: -1,
                    format: Format::Text,
                },
                Field {
                    name: "password".into(),
                    raw_name: None,
                    table_oid: 16384,
                    column_attr: 2,
                    type_oid: 25,
                    type_size: -1,
                    type_modifier: -1,
                    format: Format::Binary,
                },
            ],
        }
        .into(),
        RowDescription { fields: vec![] }.into(),
        DataRow {
            columns: vec![Some(bytes(b"1")), None, Some(Bytes::new())],
        }
        .into(),
        CommandComplete {
            tag: "SELECT 2".into(),
        }
        .into(),
        ErrorResponse {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', "42P01".into()),
                (b'M', "relation \"nope\" does not exist".into()),
                (b'P', "15".into()),
            ],
            raw: Vec::new(),
        }
        .into(),
        NoticeResponse {
            fields: vec![(b'S', "NOTICE".into()), (b'M', "hello".into())],
            raw: Vec::new(),
        }
        .into(),
        ParameterDescription {
            types: vec![23, 25],
        }
        .into(),
        NoData.into(),
        ParseComplete.into(),
        BindComplete.into(),
        CloseComplete.into(),
        PortalSuspended.into(),
        EmptyQueryResponse.into(),
        CopyInResponse {
            format: Format::Text,
            column_formats: vec![Format::Text, Format::Text],
        }
        .into(),
        CopyOutResponse {
            format: Format::Binary,
            column_formats: vec![Format::Binary],
        }
        .into(),
        CopyBothResponse {
            format: Format::Binary,
            column_formats: vec![],
        }
        .into(),
        CopyData {
            data: bytes(b"row\n"),
        }
        .into(),
        CopyDone.into(),
        NotificationResponse {
            pid: 1,
            channel: "jobs".into(),
            payload: "{\"id\":1}".into(),
            channel_raw: None,
            payload_raw: None,
        }
        .into(),
        NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: vec!["_pq_.foo".into()],
        }
        .into(),
        FunctionCallResponse {
            value: Some(bytes(b"\x00\x00\x00\x02")),
        }
        .into(),
        FunctionCallResponse { value: None }.into(),
    ]
}

#[test]
fn every_frontend_message_round_trips() {
    for m in frontend_samples() {
        match m {
            FrontendMessage::Query(m) => frontend_rt(m),
            FrontendMessage::Parse(m) => frontend_rt(m),
            FrontendMessage::Bind(m) => frontend_rt(m),
            FrontendMessage::Describe(m) => frontend_rt(m),
            FrontendMessage::Execute(m) => frontend_rt(m),
            FrontendMessage::Sync(m) => frontend_rt(m),
            FrontendMessage::Flush(m) => frontend_rt(m),
            FrontendMessage::Close(m) => frontend_rt(m),
            FrontendMessage::Terminate(m) => frontend_rt(m),
            FrontendMessage::CopyData(m) => frontend_rt(m),
            FrontendMessage::CopyDone(m) => frontend_rt(m),
            FrontendMessage::CopyFail(m) => frontend_rt(m),
            FrontendMessage::FunctionCall(m) => frontend_rt(m),
            FrontendMessage::PasswordMessage(m) => frontend_rt(m),
        }
    }
}

#[test]
fn every_backend_message_round_trips() {
    for m in backend_samples() {
        match m {
            BackendMessage::Authentication(m) => backend_rt(m),
            BackendMessage::ParameterStatus(m) => backend_rt(m),
            BackendMessage::BackendKeyData(m) => backend_rt(m),
            BackendMessage::ReadyForQuery(m) => backend_rt(m),
            BackendMessage::RowDescription(m) => backend_rt(m),
            BackendMessage::DataRow(m) => backend_rt(m),
            BackendMessage::CommandComplete(m) => backend_rt(m),
            BackendMessage::ErrorResponse(m) => backend_rt(m),
            BackendMessage::NoticeResponse(m) => backend_rt(m),
            BackendMessage::ParameterDescription(m) => backend_rt(m),
            BackendMessage::NoData(m) => backend_rt(m),
            BackendMessage::ParseComplete(m) => backend_rt(m),
            BackendMessage::BindComplete(m) => backend_rt(m),
            BackendMessage::CloseComplete(m) => backend_rt(m),
            BackendMessage::PortalSuspended(m) => backend_rt(m),
            BackendMessage::EmptyQueryResponse(m) => backend_rt(m),
            BackendMessage::CopyInResponse(m) => backend_rt(m),
            BackendMessage::CopyOutResponse(m) => backend_rt(m),
            BackendMessage::CopyBothResponse(m) => backend_rt(m),
            BackendMessage::CopyData(m) => backend_rt(m),
            BackendMessage::CopyDone(m) => backend_rt(m),
            BackendMessage::NotificationResponse(m) => backend_rt(m),
            BackendMessage::NegotiateProtocolVersion(m) => backend_rt(m),
            BackendMessage::FunctionCallResponse(m) => backend_rt(m),
        }
    }
}

fn sample_startup() -> Startup {
    Startup::new(vec![
        ("user".into(), "ci".into()),
        ("database".into(), "app".into()),
        ("application_name".into(), "psql".into()),
        ("options".into(), "-c search_path=public".into()),
    ])
}

fn startup_samples() -> Vec<StartupFrame> {
    vec![
        StartupFrame::SslRequest,
        StartupFrame::GssEncRequest,
        StartupFrame::Startup(sample_startup()),
        StartupFrame::Startup(Startup {
            protocol: PROTOCOL_3_0 | 2,
            params: vec![("user".into(), "ci".into())],
        }),
        StartupFrame::CancelRequest(CancelRequest {
            pid: 1234,
            secret_key: bytes(b"\xde\xad\xbe\xef"),
        }),
        StartupFrame::CancelRequest(CancelRequest {
            pid: 1,
            secret_key: Bytes::from(vec![7u8; MAX_CANCEL_KEY]),
        }),
    ]
}

#[test]
fn every_startup_message_round_trips() {
    for s in startup_samples() {
        let wire = s.to_bytes();
        let mut buf = BytesMut::from(&wire[..]);
        let decoded = decode_startup(&mut buf, MAX_STARTUP_MESSAGE)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty());
        assert_eq!(decoded, s);
        assert_eq!(decoded.to_bytes(), wire);
    }
    let s = sample_startup();
    assert_eq!(s.user(), Some("ci"));
    assert_eq!(s.database(), Some("app"));
    assert_eq!(s.param("options"), Some("-c search_path=public"));
    let only_user = Startup::new(vec![("user".into(), "ci".into())]);
    assert_eq!(
        only_user.database(),
        Some("ci"),
        "database defaults to user"
    );
}

#[test]
fn ssl_request_leaves_early_plaintext_in_the_buffer() {
    // CVE-2021-23214: bytes sent after SSLRequest, before the answer, must
    // stay visible to the session (which refuses them), not be swallowed.
    let mut wire = BytesMut::from(&StartupFrame::SslRequest.to_bytes()[..]);
    wire.extend_from_slice(&Query { sql: "x".into() }.to_bytes());
    let first = decode_startup(&mut wire, MAX_STARTUP_MESSAGE).unwrap();
    assert_eq!(first, Some(StartupFrame::SslRequest));
    assert!(!wire.is_empty());
}

#[test]
fn direct_tls_is_told_apart_from_a_startup_message() {
    assert!(is_direct_tls(0x16));
    let startup = sample_startup().to_bytes();
    assert!(!is_direct_tls(startup[0]));
}

/// A client's whole conversation as one byte stream.
fn client_stream() -> (Bytes, Vec<Frame>) {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&sample_startup().to_bytes());
    let mut frames = Vec::new();
    for m in frontend_samples() {
        let b = m.to_bytes();
        frames.push(one_frame(&b));
        wire.extend_from_slice(&b);
    }
    (wire.freeze(), frames)
}

/// Feeds `wire` in the chunk sizes `next_chunk` picks, decoding as it goes.
fn decode_in_chunks(wire: &Bytes, mut next_chunk: impl FnMut() -> usize) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut pos = 0;
    let mut started = false;
    let mut frames = Vec::new();
    while pos < wire.len() {
        let n = next_chunk().clamp(1, wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        loop {
            if !started {
                match decode_startup(&mut buf, MAX_STARTUP_MESSAGE).unwrap() {
                    Some(StartupFrame::Startup(s)) => {
                        assert_eq!(s, sample_startup());
                        started = true;
                    }
                    Some(other) => panic!("unexpected {other:?}"),
                    None => break,
                }
            } else {
                match decode_frame(&mut buf, DEFAULT_MAX_MESSAGE).unwrap() {
                    Some(f) => frames.push(f),
                    None => break,
                }
            }
        }
    }
    assert!(buf.is_empty());
    frames
}

#[test]
fn split_points_do_not_change_the_frames() {
    let (wire, expected) = client_stream();
    assert_eq!(decode_in_chunks(&wire, || wire.len()), expected);
    assert_eq!(decode_in_chunks(&wire, || 1), expected);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let frames = decode_in_chunks(&wire, || 1 + rng.below(40));
        assert_eq!(frames, expected);
    }
    for f in &expected {
        FrontendMessage::parse(f).expect("each frame parses");
    }
}

fn frame(tag: u8, body: &'static [u8]) -> Frame {
    Frame {
        tag: Some(tag),
        body: Bytes::from_static(body),
    }
}

fn malformed(r: Result<impl Debug, CodecError>) -> String {
    match r {
        Err(e @ CodecError::Malformed { .. }) => e.to_string(),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn short_lengths_are_malformed() {
    for len in [i32::MIN, -1, 0, 3] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"Q");
        buf.extend_from_slice(&len.to_be_bytes());
        let e = malformed(decode_frame(&mut buf, DEFAULT_MAX_MESSAGE));
        assert!(e.contains("below the minimum of 4"), "{e}");
    }
    for len in [-1i32, 0, 7] {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let e = malformed(decode_startup(&mut buf, MAX_STARTUP_MESSAGE));
        assert!(e.contains("minimum of 8"), "{e}");
    }
}

#[test]
fn oversized_lengths_are_refused_before_the_body_arrives() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"Q");
    buf.extend_from_slice(&1_000_001i32.to_be_bytes());
    let err = decode_frame(&mut buf, 1_000_000).unwrap_err();
    assert_eq!(
        err,
        CodecError::TooLarge {
            tag: Some(b'Q'),
            len: 1_000_001,
            max: 1_000_000
        }
    );
    assert!(err.to_string().contains("'Q'"), "{err}");
    let mut buf = BytesMut::from(&(MAX_STARTUP_MESSAGE as i32 + 1).to_be_bytes()[..]);
    assert!(matches!(
        decode_startup(&mut buf, MAX_STARTUP_MESSAGE),
        Err(CodecError::TooLarge { tag: None, .. })
    ));
}

#[test]
fn incomplete_input_waits_for_more() {
    let wire = sample_bind().to_bytes();
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_MESSAGE), Ok(None));
        assert_eq!(&buf[..], &wire[..cut], "buffer untouched");
    }
    let wire = sample_startup().to_bytes();
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(decode_startup(&mut buf, MAX_STARTUP_MESSAGE), Ok(None));
    }
}

#[test]
fn unknown_startup_codes_are_refused() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&131_072u32.to_be_bytes()); // protocol 2.0
    let err = decode_startup(&mut buf, MAX_STARTUP_MESSAGE).unwrap_err();
    assert_eq!(err, CodecError::UnknownStartupCode(131_072));
    assert!(err.to_string().contains("protocol 2.0"), "{err}");

    let mut buf = BytesMut::new();
    buf.extend_from_slice(&12i32.to_be_bytes());
    buf.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    buf.extend_from_slice(b"junk");
    let e = malformed(decode_startup(&mut buf, MAX_STARTUP_MESSAGE));
    assert!(e.contains("SSLRequest"), "{e}");
}

#[test]
fn startup_strings_must_be_terminated_and_utf8() {
    let startup = |body: &[u8]| {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(8 + body.len() as i32).to_be_bytes());
        buf.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        buf.extend_from_slice(body);
        decode_startup(&mut buf, MAX_STARTUP_MESSAGE)
    };
    assert!(startup(b"user\0ci\0\0").is_ok());
    assert!(malformed(startup(b"user\0ci\0")).contains("NUL"));
    assert!(malformed(startup(b"user\0c\xffi\0\0")).contains("UTF-8"));
    assert!(malformed(startup(b"user\0ci\0\0x")).contains("unexpected bytes"));
    assert!(malformed(startup(b"")).contains("NUL"));
}

#[test]
fn cancel_keys_outside_4_to_256_bytes_are_malformed() {
    for len in [0usize, 3, MAX_CANCEL_KEY + 1] {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&(12 + len as i32).to_be_bytes());
        buf.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        buf.extend_from_slice(&1i32.to_be_bytes());
        buf.extend_from_slice(&vec![0u8; len]);
        let e = malformed(decode_startup(&mut buf, MAX_STARTUP_MESSAGE));
        assert!(
            e.contains("CancelRequest") && e.contains("secret key"),
            "{e}"
        );
    }
}

#[test]
fn malformed_frontend_messages_name_message_and_field() {
    let e = malformed(Query::parse(&frame(b'Q', b"SELECT 1")));
    assert!(e.contains("Query") && e.contains("NUL"), "{e}");
    let e = malformed(Parse::parse(&frame(b'P', b"\0SELECT \xc3\x28\0\0\0")));
    assert!(
        e.contains("Parse") && e.contains("query") && e.contains("UTF-8"),
        "{e}"
    );
    // The server stops at the first NUL and rejects the rest; so must we,
    // or the proxy and the server read different statements.
    let e = malformed(Query::parse(&frame(b'Q', b"SELECT 1\0DROP TABLE t\0")));
    assert!(e.contains("unexpected bytes"), "{e}");
    let e = malformed(Parse::parse(&frame(b'P', b"\0SELECT 1\0\xff\xff")));
    assert!(e.contains("parameter types"), "{e}");
    let e = malformed(Sync::parse(&frame(b'S', b"x")));
    assert!(e.contains("Sync"), "{e}");
    let e = malformed(Describe::parse(&frame(b'D', b"Xname\0")));
    assert!(e.contains("kind"), "{e}");
    let e = malformed(Query::parse(&frame(b'P', b"x\0")));
    assert!(e.contains("expected 'Q'"), "{e}");
    let e = malformed(FrontendMessage::parse(&frame(b'z', b"")));
    assert!(e.contains("unknown message type 'z'"), "{e}");
    let e = malformed(BackendMessage::parse(&frame(0x01, b"")));
    assert!(e.contains("0x01"), "{e}");
}

#[test]
fn truncated_binds_are_malformed_at_every_cut() {
    let wire = sample_bind().to_bytes();
    let body = one_frame(&wire).body;
    for cut in 0..body.len() {
        let f = Frame {
            tag: Some(b'B'),
            body: body.slice(..cut),
        };
        let e = malformed(Bind::parse(&f));
        assert!(e.contains("Bind"), "{e}");
    }
}

#[test]
fn bind_inconsistencies_are_malformed() {
    let build = |formats: &[i16], lens: &[i32], tail: &[u8]| {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"\0\0");
        b.extend_from_slice(&(formats.len() as u16).to_be_bytes());
        for f in formats {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&(lens.len() as u16).to_be_bytes());
        for l in lens {
            b.extend_from_slice(&l.to_be_bytes());
            if *l > 0 {
                b.extend_from_slice(&vec![b'x'; *l as usize]);
            }
        }
        b.extend_from_slice(tail);
        Bind::parse(&Frame {
            tag: Some(b'B'),
            body: b.freeze(),
        })
    };
    let ok = build(&[1], &[2, -1], b"\0\0").unwrap();
    assert_eq!(ok.param_format(1), Format::Binary);
    assert_eq!(ok.params[1], None);
    assert!(malformed(build(&[0, 1], &[1, 1, 1], b"\0\0")).contains("2 parameter formats"));
    assert!(malformed(build(&[2], &[1], b"\0\0")).contains("format code 2"));
    assert!(malformed(build(&[], &[-2], b"\0\0")).contains("only -1 (NULL)"));
    assert!(malformed(build(&[], &[1], b"\0\x01")).contains("result formats"));
    // A count that cannot fit is refused before anything is allocated.
    let e = malformed(Bind::parse(&frame(b'B', b"\0\0\0\0\xff\xff")));
    assert!(e.contains("65535"), "{e}");
}

#[test]
fn malformed_backend_messages_are_errors() {
    let e = malformed(DataRow::parse(&frame(b'D', b"\0\x01\0\0\0\x09abc")));
    assert!(e.contains("DataRow") && e.contains("columns[0]"), "{e}");
    let e = malformed(ReadyForQuery::parse(&frame(b'Z', b"Q")));
    assert!(e.contains("status"), "{e}");
    let e = malformed(Authentication::parse(&frame(b'R', b"\0\0\0\x05ab")));
    assert!(e.contains("salt"), "{e}");
    let e = malformed(Authentication::parse(&frame(b'R', b"\0\0\0\x00x")));
    assert!(e.contains("unexpected bytes"), "{e}");
    let e = malformed(RowDescription::parse(&frame(b'T', b"\0\x02id\0")));
    assert!(e.contains("fields"), "{e}");
    let e = malformed(ErrorResponse::parse(&frame(b'E', b"Mno end\0")));
    assert!(e.contains("ErrorResponse"), "{e}");
    let e = malformed(CommandComplete::parse(&frame(b'C', b"SELECT \xff\0")));
    assert!(e.contains("UTF-8"), "{e}");
    let e = malformed(NegotiateProtocolVersion::parse(&frame(
        b'v',
        b"\0\0\0\0\xff\xff\xff\xff",
    )));
    assert!(e.contains("options"), "{e}");
}

#[test]
fn proxy_built_messages_read_back() {
    let f = one_frame(&error_response(
        "ERROR",
        "42501",
        "DDL is not allowed from CI",
    ));
    let e = ErrorResponse::parse(&f).unwrap();
    assert_eq!(e.severity(), Some("ERROR"));
    assert_eq!(e.field(field::SEVERITY), Some("ERROR"));
    assert_eq!(e.sqlstate(), Some("42501"));
    assert_eq!(e.message(), Some("DDL is not allowed from CI"));

    // A NUL in a message must not smuggle in extra fields.
    let f = one_frame(&error_response("ERROR", "42501", "a\0Cxx"));
    let e = ErrorResponse::parse(&f).unwrap();
    assert_eq!(e.message(), Some("a"));
    assert_eq!(e.fields.len(), 4);

    let f = one_frame(&ready_for_query(TransactionStatus::Failed));
    assert_eq!(
        ReadyForQuery::parse(&f).unwrap().status,
        TransactionStatus::Failed
    );

    let err = CodecError::TooLarge {
        tag: Some(b'Q'),
        len: 10,
        max: 5,
    };
    let f = one_frame(&err.to_error_response());
    let e = ErrorResponse::parse(&f).unwrap();
    assert_eq!(e.severity(), Some("FATAL"));
    assert_eq!(e.sqlstate(), Some("08P01"));
    assert!(e.message().unwrap().contains("over the limit"));
}

#[test]
fn channel_binding_is_removed_from_the_sasl_offer() {
    let offer = Authentication::Sasl {
        mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
    }
    .to_bytes();
    let rewritten = strip_channel_binding(&one_frame(&offer)).unwrap();
    assert_eq!(
        Authentication::parse(&one_frame(&rewritten)).unwrap(),
        Authentication::Sasl {
            mechanisms: vec!["SCRAM-SHA-256".into()]
        }
    );
    let md5 = Authentication::Md5Password { salt: [1, 2, 3, 4] }.to_bytes();
    assert_eq!(strip_channel_binding(&one_frame(&md5)).unwrap(), md5);
    assert!(strip_channel_binding(&frame(b'Z', b"I")).is_err());
}

#[test]
fn password_message_helpers_follow_auth_state() {
    let sasl = SaslInitialResponse {
        mechanism: "SCRAM-SHA-256".into(),
        data: Some(bytes(b"n,,n=,r=nonce")),
    };
    let f = one_frame(&sasl.to_bytes());
    let p = PasswordMessage::parse(&f).unwrap();
    assert_eq!(p.sasl_initial_response().unwrap(), sasl);
    assert!(malformed(p.password()).contains("unexpected bytes"));

    let p = PasswordMessage {
        body: bytes(b"s3cr\xffet\0"),
    };
    assert_eq!(p.password().unwrap(), bytes(b"s3cr\xffet"));
    assert!(!format!("{p:?}").contains("s3cr"), "Debug must redact");
    assert!(malformed(p.sasl_initial_response()).contains("SASLInitialResponse"));

    let none = SaslInitialResponse {
        mechanism: "SCRAM-SHA-256".into(),
        data: None,
    };
    let p = PasswordMessage::parse(&one_frame(&none.to_bytes())).unwrap();
    assert_eq!(p.sasl_initial_response().unwrap(), none);
}

#[test]
fn debug_output_never_shows_values() {
    let row = DataRow {
        columns: vec![Some(bytes(b"hunter2"))],
    };
    assert!(!format!("{row:?}").contains("hunter2"));
    assert!(!format!("{:?}", sample_bind()).contains("42"));
    let f = one_frame(&row.to_bytes());
    assert!(!format!("{f:?}").contains("hunter2"));
}

#[test]
fn command_tags_report_row_counts() {
    let rows = |t: &'static str| CommandComplete { tag: t.into() }.rows();
    assert_eq!(rows("SELECT 5"), Some(5));
    assert_eq!(rows("INSERT 0 3"), Some(3));
    assert_eq!(rows("UPDATE 0"), Some(0));
    assert_eq!(rows("CREATE TABLE"), None);
    assert_eq!(rows("BEGIN"), None);
}

/// Decodes everything in `input` both ways; only checks nothing panics.
fn chew(input: &[u8], max: usize) {
    let mut buf = BytesMut::from(input);
    let _ = decode_startup(&mut buf, max);
    let mut buf = BytesMut::from(input);
    while let Ok(Some(f)) = decode_frame(&mut buf, max) {
        if let Ok(m) = FrontendMessage::parse(&f) {
            let _ = m.to_bytes();
            if let FrontendMessage::PasswordMessage(p) = &m {
                let _ = p.password();
                let _ = p.sasl_initial_response();
            }
        }
        if let Ok(m) = BackendMessage::parse(&f) {
            let _ = m.to_bytes();
        }
        let _ = strip_channel_binding(&f);
    }
}

#[test]
fn fuzz_random_bytes_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let tags = b"QPBDESHCXdcfFpRKZTtIn123sGWAvVN";
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Make plausible headers common so bodies get parsed, not just framed.
        if len >= 5 && rng.below(2) == 0 {
            input[0] = tags[rng.below(tags.len())];
            input[1..5].copy_from_slice(&((len - 1) as u32).to_be_bytes());
        }
        chew(&input, 1 + rng.below(128));
        chew(&input, DEFAULT_MAX_MESSAGE);
    }
}

#[test]
fn fuzz_mutated_messages_never_panic() {
    let mut seeds: Vec<Bytes> = frontend_samples().iter().map(|m| m.to_bytes()).collect();
    seeds.extend(backend_samples().iter().map(|m| m.to_bytes()));
    seeds.extend(startup_samples().iter().map(|s| s.to_bytes()));
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..50_000 {
        let mut input = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] ^= 1 << rng.below(8);
                }
                1 if !input.is_empty() => {
                    let i = rng.below(input.len());
                    input[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)];
                }
                2 => input.truncate(rng.below(input.len() + 1)),
                3 => {
                    let i = rng.below(input.len() + 1);
                    input.insert(i, rng.next() as u8);
                }
                _ => {
                    // Keep the length word consistent so the body parser
                    // sees the mutation instead of the framer.
                    if input.len() >= 5 {
                        let len = (input.len() - 1) as u32;
                        input[1..5].copy_from_slice(&len.to_be_bytes());
                    }
                }
            }
        }
        chew(&input, DEFAULT_MAX_MESSAGE);
    }
}

#[test]
fn a_declared_length_alone_does_not_pin_memory() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"D");
    buf.extend_from_slice(&(DEFAULT_MAX_MESSAGE as u32).to_be_bytes());
    assert_eq!(decode_frame(&mut buf, DEFAULT_MAX_MESSAGE), Ok(None));
    assert!(buf.capacity() <= 5 + MAX_RESERVE + 64, "{}", buf.capacity());
}

/// SQL text in another client_encoding decodes with its invalid bytes
/// replaced and a flag; everything else about the message stays strict.
#[test]
fn query_and_parse_in_another_encoding() {
    let q = frame(b'Q', b"SELECT 'caf\xe9'\0");
    assert!(Query::parse(&q).is_err());
    let (query, utf8) = Query::parse_any_encoding(&q).expect("decodes");
    assert!(!utf8);
    assert_eq!(query.sql.as_str(), "SELECT 'caf\u{fffd}'");
    let (query, utf8) = Query::parse_any_encoding(&frame(b'Q', b"SELECT 1\0")).expect("decodes");
    assert!(utf8);
    assert_eq!(query.sql.as_str(), "SELECT 1");
    // Still malformed: no terminator, trailing bytes.
    assert!(Query::parse_any_encoding(&frame(b'Q', b"SELECT '\xe9'")).is_err());
    assert!(Query::parse_any_encoding(&frame(b'Q', b"SELECT '\xe9'\0x")).is_err());

    let p = frame(b'P', b"s1\0SELECT '\xe9' = $1\0\x00\x01\x00\x00\x00\x19");
    let (parse, utf8) = Parse::parse_any_encoding(&p).expect("decodes");
    assert!(!utf8);
    assert_eq!(parse.name.as_str(), "s1");
    assert_eq!(parse.sql.as_str(), "SELECT '\u{fffd}' = $1");
    assert_eq!(parse.param_types, vec![25]);
    // A bad parameter list, or a statement name that is not UTF-8, is
    // still an error.
    assert!(
        Parse::parse_any_encoding(&frame(b'P', b"s1\0SELECT '\xe9'\0\x00\x02\x00\x00")).is_err()
    );
    assert!(Parse::parse_any_encoding(&frame(b'P', b"s\xe9\0SELECT 1\0\x00\x00")).is_err());
}

/// Backend text in another client_encoding (a latin9 column name, error
/// message or notification) decodes, and a RowDescription re-encoded by
/// the proxy (masking rewrites it) carries the name's own bytes.
#[test]
fn backend_text_in_another_encoding() {
    // SELECT 'x' AS "€" in latin9: the name is the one byte 0xa4.
    let mut body = vec![0u8, 1, 0xa4, 0];
    body.extend_from_slice(&0u32.to_be_bytes()); // table oid
    body.extend_from_slice(&0i16.to_be_bytes()); // attribute
    body.extend_from_slice(&25u32.to_be_bytes()); // type oid
    body.extend_from_slice(&(-1i16).to_be_bytes()); // type size
    body.extend_from_slice(&(-1i32).to_be_bytes()); // type modifier
    body.extend_from_slice(&0i16.to_be_bytes()); // format
    let t = Frame {
        tag: Some(b'T'),
        body: Bytes::from(body.clone()),
    };
    let rd = RowDescription::parse(&t).expect("decodes");
    assert_eq!(rd.fields[0].name.as_str(), "\u{fffd}");
    assert_eq!(rd.fields[0].raw_name.as_deref(), Some(&b"\xa4"[..]));
    let mut wire = vec![b'T'];
    wire.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    wire.extend_from_slice(&body);
    assert_eq!(&rd.to_bytes()[..], &wire[..], "re-encoded byte for byte");

    let e = frame(
        b'E',
        b"SERROR\0C42P01\0Mrelation \"\xa4\" does not exist\0\0",
    );
    let err = ErrorResponse::parse(&e).expect("decodes");
    assert_eq!(err.sqlstate(), Some("42P01"));
    assert_eq!(
        err.field(b'M'),
        Some("relation \"\u{fffd}\" does not exist")
    );
    let a = frame(b'A', b"\x00\x00\x00\x07ch\xa4\0caf\xe9\0");
    let n = NotificationResponse::parse(&a).expect("decodes");
    assert_eq!(n.payload.as_str(), "caf\u{fffd}");
    // Both are sent on byte for byte when encoded again.
    assert_eq!(&n.to_bytes()[5..], &a.body[..]);
    assert_eq!(&err.to_bytes()[5..], &e.body[..]);
    // Still malformed: a missing terminator.
    assert!(ErrorResponse::parse(&frame(b'E', b"SERROR\0M\xa4")).is_err());
}
