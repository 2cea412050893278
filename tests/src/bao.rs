//! A real OpenBao dev server for the tests (SKELETON: filled in with the HTTP handler).
