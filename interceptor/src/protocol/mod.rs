//! One handler per store protocol. Each takes the accepted client stream, the
//! original destination and the session record, runs the session to its end
//! and returns why it ended.

pub mod http;
pub mod postgres;
pub mod redis;
pub mod tcp;

use tokio::io::{AsyncRead, AsyncWrite};

/// A client or server stream, plain or TLS.
pub type BoxIo = Box<dyn Io>;
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
