//! Builds the eBPF programs (interceptor-ebpf, bpfel-unknown-none, nightly)
//! and hands the object to the daemon through `INTERCEPTOR_EBPF_OBJ`, so a
//! plain `cargo build -p interceptor` yields one self-contained binary.
//!
//! Set `INTERCEPTOR_EBPF_OBJ` yourself to embed a prebuilt object instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    println!("cargo:rerun-if-env-changed=INTERCEPTOR_EBPF_OBJ");
    if let Ok(obj) = env::var("INTERCEPTOR_EBPF_OBJ") {
        println!("cargo:rustc-env=INTERCEPTOR_EBPF_OBJ={obj}");
        return;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("interceptor/ lives in the workspace");
    let ebpf_dir = root.join("interceptor-ebpf");
    for f in ["Cargo.toml", "src/main.rs", "src/lib.rs"] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(f).display());
    }
    let target_dir = root.join("target").join("ebpf");
    build_ebpf(&ebpf_dir, &target_dir);
    let obj = target_dir.join("bpfel-unknown-none/release/interceptor-ebpf");
    if !obj.exists() {
        panic!(
            "eBPF build reported success but {} is missing",
            obj.display()
        );
    }
    println!("cargo:rustc-env=INTERCEPTOR_EBPF_OBJ={}", obj.display());
}

fn build_ebpf(ebpf_dir: &Path, target_dir: &Path) {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(ebpf_dir)
        .arg("+nightly")
        .args(["build", "--release", "--features", "programs"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer cargo (stable) leaks settings that must not reach the nightly
    // eBPF build: its compiler, wrappers, flags and toolchain pin.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP_TOOLCHAIN")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
        {
            cmd.env_remove(key);
        }
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run `cargo +nightly` to build the eBPF programs ({e}): run `cargo xtask setup`"
        )
    });
    if !status.success() {
        panic!(
            "building the eBPF programs failed ({status}); the nightly toolchain with rust-src \
             and bpf-linker are required: run `cargo xtask setup`"
        );
    }
}
