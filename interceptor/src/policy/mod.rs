//! Policy: what a rule looks at in a request, and whether it matches.
//!
//! Each protocol has its own analyzer (what the request does, as far as
//! policy cares) and matcher (does a `[[rule]]` apply to it). They are pure
//! functions so that the session handlers stay thin and the decisions are
//! testable without a server.

pub mod sql;
