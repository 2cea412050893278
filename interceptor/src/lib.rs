//! interceptor: transparent policy proxy between CI tasks and secret stores.
//!
//! The daemon and CLI live in `main.rs`; the modules are a library so that
//! the integration tests and benchmarks can drive the same code.

pub mod audit;
pub mod config;
pub mod control;
pub mod daemon;
pub mod identity;
pub mod mask;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod redirect;
pub mod tls;
