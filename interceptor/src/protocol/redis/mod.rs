//! The `redis` protocol: RESP2/RESP3 as spoken by Redis and compatible
//! servers.
//!
//! So far only the codec ([`codec`]): values and client commands decoded in
//! place over `bytes::Bytes`, with limits checked before buffering, and the
//! encoders for what the proxy writes itself.

pub mod codec;
pub mod masking;
pub mod session;

#[cfg(test)]
mod tests;

pub use codec::{
    decode, decode_command, error_reply, CodecError, Command, Decoder, Keys, Limits, Value,
};
