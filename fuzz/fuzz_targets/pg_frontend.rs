//! Client bytes as the PostgreSQL session reads them: the startup phase
//! (SSLRequest / GSSENCRequest, then a StartupMessage or CancelRequest), then
//! tagged messages up to a 1 MiB limit, each parsed as a `FrontendMessage`.
//!
//! Checked: nothing panics; a decoder that wants more bytes leaves the buffer
//! as it was; and whatever parses re-encodes to exactly the bytes it came
//! from. The proxy checks a message and forwards it, so a message that
//! re-encoded differently would be read one way by the policy and another
//! way by the server.
#![no_main]

use bytes::BytesMut;
use interceptor::protocol::postgres::{
    decode_frame, decode_startup, CodecError, Frame, FrontendMessage, StartupFrame,
    MAX_STARTUP_MESSAGE,
};
use libfuzzer_sys::fuzz_target;

/// The per-message limit the fuzzer decodes with (the daemon's default is
/// 64 MiB; a smaller one reaches the TooLarge path with small inputs).
const MAX_MESSAGE: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if !startup_phase(&mut buf) {
        // No StartupMessage at the front: read the whole input as tagged
        // messages, so the fuzzer reaches them without a valid startup.
        buf = BytesMut::from(data);
    }
    loop {
        let before = buf.clone();
        match decode_frame(&mut buf, MAX_MESSAGE) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                assert!(
                    frame.to_bytes()[..] == before[..used],
                    "{frame:?} does not re-frame to the bytes it was cut from"
                );
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

/// Decodes startup-phase messages as the session does (encryption requests
/// are answered and followed by another startup message). True once a
/// StartupMessage was read.
fn startup_phase(buf: &mut BytesMut) -> bool {
    for _ in 0..4 {
        let before = buf.clone();
        match decode_startup(buf, MAX_STARTUP_MESSAGE) {
            Ok(Some(frame)) => {
                let used = before.len() - buf.len();
                assert!(
                    frame.to_bytes()[..] == before[..used],
                    "{frame:?} re-encodes differently"
                );
                match &frame {
                    StartupFrame::Startup(s) => {
                        let _ = (s.user(), s.database(), s.param("options"));
                        let _ = format!("{s:?}");
                        return true;
                    }
                    StartupFrame::CancelRequest(c) => {
                        let _ = format!("{c:?}");
                        return false;
                    }
                    StartupFrame::SslRequest | StartupFrame::GssEncRequest => {}
                }
            }
            Ok(None) => {
                assert!(
                    buf[..] == before[..],
                    "decode_startup consumed an incomplete message"
                );
                return false;
            }
            Err(e) => {
                check_error(&e);
                return false;
            }
        }
    }
    false
}

fn check_frame(frame: &Frame) {
    let wire = frame.to_bytes();
    let (header, n) = frame.header();
    assert_eq!(&header[..n], &wire[..n]);
    match FrontendMessage::parse(frame) {
        Ok(msg) => {
            assert_eq!(Some(msg.tag()), frame.tag);
            let _ = (msg.name(), format!("{msg:?}"));
            assert!(
                msg.to_bytes() == wire,
                "{} re-encodes differently: {msg:?}",
                msg.name()
            );
            match &msg {
                FrontendMessage::Bind(b) => {
                    for i in 0..=b.params.len() {
                        let _ = b.param_format(i);
                    }
                }
                FrontendMessage::PasswordMessage(p) => {
                    let _ = p.password();
                    let _ = p.sasl_response();
                    if let Ok(sasl) = p.sasl_initial_response() {
                        let _ = format!("{sasl:?}");
                        assert!(
                            sasl.to_bytes() == wire,
                            "SASLInitialResponse re-encodes differently"
                        );
                    }
                }
                _ => {}
            }
        }
        Err(e) => check_error(&e),
    }
}

fn check_error(e: &CodecError) {
    if let CodecError::TooLarge { len, max, .. } = e {
        assert!(len > max);
    }
    let _ = e.to_string();
    let _ = e.to_error_response();
}
