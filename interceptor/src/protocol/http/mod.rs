//! The `http` protocol: HTTP/1.1 secret APIs (Vault, OpenBao and others).
//! See docs/http.md.

pub mod json;
pub mod path;
pub mod session;
