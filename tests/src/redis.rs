//! A real redis-server for the tests (SKELETON: filled in with the Redis handler).
