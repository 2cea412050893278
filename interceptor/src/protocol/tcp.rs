//! The `tcp` protocol: relay bytes both ways, half-close included, and count
//! them. No parsing, so no rules or masks apply to these stores.

use tokio::{io::copy_bidirectional_with_sizes, net::TcpStream};

use crate::audit::SessionRecord;

const BUF: usize = 64 * 1024;

/// Relays until both directions are closed; returns why the session ended.
pub async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    session: &mut SessionRecord,
) -> String {
    let _ = client.set_nodelay(true);
    session.upstream_addr = server.peer_addr().ok();
    match copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await {
        Ok((up, down)) => {
            session.bytes_up = up;
            session.bytes_down = down;
            "closed".to_string()
        }
        Err(e) => format!("relay error: {e}"),
    }
}
