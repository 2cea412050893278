//! A `redis` session: commands decided, replies masked, everything
//! recorded. SKELETON: refuses every connection (fail closed) until the
//! handler is written.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::{
    audit::{hostkey::HostKey, Recorder, SessionRecord},
    config::{MaskConfig, StatementMode, StoreConfig},
    policy::rules::SessionPolicy,
    protocol::tcp::Upstream,
    proxy::{record_session, reset},
    tls::LocalCa,
};

/// One `redis` store: its masks, TLS settings and what the sessions share.
pub struct RedisStore {
    pub name: String,
}

impl RedisStore {
    pub fn new(
        store: &StoreConfig,
        _masks: &[MaskConfig],
        _key: HostKey,
        _ca: LocalCa,
        _statements: StatementMode,
    ) -> anyhow::Result<RedisStore> {
        Ok(RedisStore {
            name: store.name.clone(),
        })
    }
}

/// Runs a `redis` session to its end and records it.
pub async fn serve(
    client: TcpStream,
    _upstream: Upstream,
    mut session: SessionRecord,
    _store: Arc<RedisStore>,
    _policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
) {
    reset(client);
    session.close("redis handler not available in this build: connection refused (fail closed)");
    record_session(&*recorder, &session);
}
