//! Server bytes as the PostgreSQL session reads them: tagged messages up to a
//! 1 MiB limit, each parsed as a `BackendMessage`; row descriptions and rows
//! walked field by field as masking will, and every Authentication frame
//! rewritten by `strip_channel_binding` as the proxy does before relaying it.
//!
//! Checked: nothing panics; whatever parses re-encodes to the bytes it came
//! from; the channel-binding rewrite yields a valid Authentication message
//! without SCRAM-SHA-256-PLUS and leaves every other request untouched.
#![no_main]

use bytes::BytesMut;
use interceptor::protocol::postgres::{
    backend::SCRAM_SHA_256_PLUS, decode_frame, error_response, ready_for_query,
    strip_channel_binding, Authentication, BackendMessage, CodecError, ErrorResponse, Format,
    Frame, Message,
};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, MAX_MESSAGE) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                assert!(frame.to_bytes()[..] == before[..used]);
                check_frame(&frame);
            }
            Ok(None) => {
                assert!(
                    buf[..] == before[..],
                    "decode_frame consumed an incomplete message"
                );
                break;
            }
            Err(e) => {
                check_error(&e);
                break;
            }
        }
    }
});

fn check_frame(frame: &Frame) {
    let wire = frame.to_bytes();
    match BackendMessage::parse(frame) {
        Ok(msg) => {
            assert_eq!(Some(msg.tag()), frame.tag);
            let _ = (msg.name(), format!("{msg:?}"));
            assert!(
                msg.to_bytes() == wire,
                "{} re-encodes differently: {msg:?}",
                msg.name()
            );
            inspect(&msg, frame);
        }
        Err(e) => check_error(&e),
    }
    if frame.tag == Some(Authentication::TAG) {
        check_strip_channel_binding(frame);
    }
}

/// What masking and audit read from a message.
fn inspect(msg: &BackendMessage, frame: &Frame) {
    match msg {
        BackendMessage::RowDescription(rd) => {
            for f in &rd.fields {
                assert_eq!(Format::from_code(f.format.code()), Some(f.format));
                let _ = (f.name.len(), f.table_oid, f.column_attr, f.type_oid);
                let _ = (f.type_size, f.type_modifier);
            }
        }
        BackendMessage::DataRow(row) => {
            let bytes: usize = row.columns.iter().flatten().map(|c| c.len()).sum();
            assert!(bytes + 2 + 4 * row.columns.len() == frame.body.len());
        }
        BackendMessage::CommandComplete(c) => {
            let _ = c.rows();
        }
        BackendMessage::ErrorResponse(e) => {
            let _ = (e.severity(), e.sqlstate(), e.message());
            // The proxy writes its own errors with the same fields.
            let rebuilt = error_response(
                e.severity().unwrap_or("ERROR"),
                e.sqlstate().unwrap_or("XX000"),
                e.message().unwrap_or(""),
            );
            let mut b = BytesMut::from(&rebuilt[..]);
            let f = decode_frame(&mut b, usize::MAX)
                .expect("error_response frames")
                .expect("error_response is whole");
            assert!(b.is_empty());
            ErrorResponse::parse(&f).expect("error_response parses");
        }
        BackendMessage::NoticeResponse(n) => {
            let _ = (n.severity(), n.sqlstate(), n.message());
        }
        BackendMessage::ReadyForQuery(r) => {
            assert!(ready_for_query(r.status) == frame.to_bytes());
        }
        _ => {}
    }
}

fn check_strip_channel_binding(frame: &Frame) {
    match strip_channel_binding(frame) {
        Ok(rewritten) => {
            let mut b = BytesMut::from(&rewritten[..]);
            let f = decode_frame(&mut b, usize::MAX)
                .expect("the rewrite frames")
                .expect("the rewrite is whole");
            assert!(b.is_empty(), "bytes after the rewritten message");
            let auth = Authentication::parse(&f).expect("the rewrite parses");
            match auth {
                Authentication::Sasl { mechanisms } => {
                    assert!(mechanisms.iter().all(|m| m.as_str() != SCRAM_SHA_256_PLUS));
                }
                _ => assert!(
                    rewritten == frame.to_bytes(),
                    "a non-SASL authentication message was changed"
                ),
            }
        }
        Err(e) => {
            assert!(Authentication::parse(frame).is_err());
            check_error(&e);
        }
    }
}

fn check_error(e: &CodecError) {
    if let CodecError::TooLarge { len, max, .. } = e {
        assert!(len > max);
    }
    let _ = e.to_string();
    let _ = e.to_error_response();
}
