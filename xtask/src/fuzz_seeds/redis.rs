//! Seeds for the redis fuzz target (SKELETON: written with the redis handler).

pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    Vec::new()
}
