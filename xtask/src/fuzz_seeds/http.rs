//! Seeds for the http fuzz target (SKELETON: written with the http handler).

pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    Vec::new()
}
