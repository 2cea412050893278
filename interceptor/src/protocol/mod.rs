//! One handler per store protocol. Each takes the accepted client stream, the
//! original destination and the session record, runs the session to its end
//! and returns why it ended.

pub mod http;
pub mod postgres;
pub mod redis;
pub mod tcp;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A client or server stream, plain or TLS.
pub type BoxIo = Box<dyn Io>;
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Writes all of `out` to `w` and flushes it (a TLS stream holds records
/// back until then), then empties `out`. Returns the bytes written, for the
/// session's counters; an error names `peer` ("client", "upstream").
pub(crate) async fn write_buf<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    peer: &str,
) -> Result<u64, String> {
    if out.is_empty() {
        return Ok(0);
    }
    w.write_all(out)
        .await
        .map_err(|e| format!("{peer} write failed: {e}"))?;
    w.flush()
        .await
        .map_err(|e| format!("{peer} write failed: {e}"))?;
    let n = out.len() as u64;
    out.clear();
    Ok(n)
}
