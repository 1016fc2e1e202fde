//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("../netns-ebpf/target/bpfel-unknown-none/release/netns-ebpf");
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.exists() {
        panic!("\n\nThe eBPF object {} is missing.\nBuild it first with:\n\n    cargo xtask build-ebpf\n\n", object.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("netns-ebpf.o");
    std::fs::copy(&object, &out).expect("copying the eBPF object");
}
