//! `cargo xtask bench http` (SKELETON: written with the http handler).

pub fn run(_seconds: u64) {
    panic!("the http benchmark is not written yet");
}
