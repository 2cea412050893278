//! The control socket: one line in (a command), one JSON document out.
//! Root-only (mode 0600); later issues add approvals and reload here.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::UnixListener,
};

/// Answers one command.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, command: &str) -> serde_json::Value;
}

/// Binds the control socket (replacing a stale one) and serves it forever.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing stale control socket {}", path.display()))
        }
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, handler: Arc<dyn Handler>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            // A 4 KiB cap: a client cannot make the daemon buffer without bound.
            let mut reader = TokioBufReader::new(r.take(4096));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = handler.handle(line.trim());
            let mut out = reply.to_string();
            out.push('\n');
            let _ = w.write_all(out.as_bytes()).await;
        });
    }
}

/// Sends one command to the daemon and returns its JSON answer.
pub fn request(path: &Path, command: &str) -> Result<serde_json::Value> {
    let mut stream = StdUnixStream::connect(path)
        .with_context(|| format!("no daemon answers on {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).context("the daemon's answer is not JSON")
}
