//! Builds the eBPF object (the `netns-ebpf` crate: nightly, `bpfel-unknown-none`,
//! build-std, bpf-linker; its own rust-toolchain.toml and .cargo/config.toml say so) and
//! embeds it, so that a plain `cargo build` or `cargo test` works on a fresh clone of a
//! machine that has the toolchain (`cargo xtask setup` installs it). Cargo's own
//! fingerprints in `netns-ebpf/target` make this a no-op when nothing changed;
//! `cargo xtask build-ebpf` runs the same build.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../netns-ebpf");
    for input in ["../netns-ebpf/src", "../netns-ebpf/Cargo.toml", "../netns-ebpf-common/src", "../netns-ebpf-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={input}");
    }
    build_ebpf(&ebpf);
    // (Not rerun for the object itself: this script writes it, and its new mtime would
    // make every later build run the script and compile the agent again.)
    let object = ebpf.join("target/bpfel-unknown-none/release/netns-ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("netns-ebpf.o");
    std::fs::copy(&object, &out).expect("copying the eBPF object");
}

/// `cargo build --release` in the eBPF crate, with none of the outer build's environment
/// (its toolchain, target, flags and jobserver are the host's, not the eBPF build's).
fn build_ebpf(dir: &Path) {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).env_clear().args(["build", "--release"]);
    for keep in ["PATH", "HOME", "RUSTUP_HOME", "CARGO_HOME", "TMPDIR"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("\n\nrunning cargo for the eBPF object in {}: {e}\n", dir.display()));
    if !out.status.success() {
        panic!(
            "\n\nbuilding the eBPF object in {} failed (the toolchain it needs: `cargo xtask setup`):\n{}\n",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
