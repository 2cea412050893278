//! The `tcp` protocol: relay bytes both ways, half-close included, and count
//! them. No parsing, so no rules or masks apply to these stores.

use std::net::SocketAddr;

use tokio::{io::copy_bidirectional_with_sizes, net::TcpStream};

use crate::{
    audit::SessionRecord,
    proxy::{reset, UpstreamConnector},
};

const BUF: usize = 64 * 1024;

pub async fn serve(
    mut client: TcpStream,
    original_dst: SocketAddr,
    upstream: &UpstreamConnector,
    session: &mut SessionRecord,
) -> String {
    let _ = client.set_nodelay(true);
    let mut server = match upstream.connect(original_dst).await {
        Ok(s) => s,
        Err(e) => {
            reset(client);
            return format!("upstream connect to {original_dst} failed: {e}");
        }
    };
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
