//! `cargo xtask bench redis` (SKELETON: written with the redis handler).

pub fn run(_seconds: u64) {
    panic!("the redis benchmark is not written yet");
}
