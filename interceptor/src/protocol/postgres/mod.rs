//! The `postgres` protocol: PostgreSQL frontend/backend protocol v3.
//!
//! The codec: framing ([`codec`]), the client's messages ([`frontend`]) and
//! the server's ([`backend`]), all parsed in place over `bytes::Bytes`. The
//! session handler ([`session`]: TLS, auth relay, policy, audit) and the
//! result masking ([`masking`]) build on it.

pub mod backend;
pub mod codec;
pub mod frontend;
pub mod masking;
pub mod session;

#[cfg(test)]
mod tests;

pub use backend::{
    error_response, ready_for_query, strip_channel_binding, Authentication, BackendMessage,
    DataRow, ErrorResponse, Field, NoticeResponse, ReadyForQuery, RowDescription,
    TransactionStatus,
};
pub use codec::{
    decode_frame, decode_startup, is_direct_tls, CodecError, Format, Frame, Message, PgStr,
    StartupFrame, DEFAULT_MAX_BACKEND_MESSAGE, DEFAULT_MAX_MESSAGE, MAX_STARTUP_MESSAGE,
};
pub use frontend::{
    Bind, CancelRequest, FrontendMessage, Parse, PasswordMessage, Query, Startup, Target,
};
