//! Builds the eBPF object (the `netns-ebpf` crate: nightly, `bpfel-unknown-none`,
//! build-std, bpf-linker; its own rust-toolchain.toml and .cargo/config.toml say so) and
//! embeds it, so that a plain `cargo build` or `cargo test` works on a fresh clone of a
//! machine that has the toolchain (`cargo xtask setup` installs it). It runs when the
//! eBPF sources or their build settings change; `cargo xtask build-ebpf` runs the same
//! build. Without the toolchain an object that is already there is used as it is.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let ebpf = manifest.join("../netns-ebpf");
    for input in [
        "../netns-ebpf/src",
        "../netns-ebpf/Cargo.toml",
        "../netns-ebpf/Cargo.lock",
        "../netns-ebpf/rust-toolchain.toml",
        "../netns-ebpf/.cargo/config.toml",
        "../netns-ebpf-common/src",
        "../netns-ebpf-common/Cargo.toml",
        "ebpf_build_env.rs",
    ] {
        println!("cargo:rerun-if-changed={input}");
    }
    // (Not rerun for the object itself: this script writes it, and its new mtime would
    // make every later build run the script and compile the agent again.)
    let object = ebpf.join("target/bpfel-unknown-none/release/netns-ebpf");
    if let Err(e) = build_ebpf(&ebpf) {
        // A machine without the eBPF toolchain can still build the agent around an
        // object built elsewhere (`cargo xtask build-ebpf` on a machine that has it).
        if !object.exists() {
            panic!("\n\n{e}\n");
        }
        println!("cargo:warning=the eBPF object was not rebuilt, using {} as it is: {}", object.display(), e.lines().next().unwrap_or(""));
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("netns-ebpf.o");
    std::fs::copy(&object, &out).expect("copying the eBPF object");
}

include!("ebpf_build_env.rs");

/// `cargo build --release` in the eBPF crate; the error says what failed and how to get
/// the toolchain.
fn build_ebpf(dir: &Path) -> Result<(), String> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(dir).args(["build", "--release"]);
    for var in HOST_BUILD_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.output().map_err(|e| format!("running cargo for the eBPF object in {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "building the eBPF object in {} failed (the toolchain it needs: `cargo xtask setup`):\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
