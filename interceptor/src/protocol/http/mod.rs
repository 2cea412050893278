//! The `http` protocol: HTTP/1.1 secret APIs (Vault, OpenBao and others).

pub mod session;
