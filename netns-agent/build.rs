//! Builds the eBPF programs (the `netns-ebpf` workspace member) for the BPF target with
//! aya-build, as aya-template does: nightly, build-std, bpf-linker, BTF. The object lands
//! in OUT_DIR and `datapath` embeds it, so a plain `cargo build` or `cargo test` works on
//! a fresh clone of a machine that has the toolchain (`cargo xtask setup` installs it).
//! aya-build reruns this for changes under netns-ebpf/; the crate the programs share with
//! the agent is listed here.

fn main() {
    for input in ["../netns-ebpf-common/src", "../netns-ebpf-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={input}");
    }
    // aya-build hands each line the nested cargo prints to cargo as a warning, which cargo
    // then repeats on every later build: only its warnings and errors, then.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../netns-ebpf");
    let package = aya_build::Package { name: "netns-ebpf", root_dir: dir.to_str().expect("a UTF-8 path"), ..Default::default() };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!(
            "\n\nbuilding the eBPF programs (netns-ebpf) failed: {e:#}\n\
             They need nightly with rust-src and bpf-linker: `cargo xtask setup` installs them.\n"
        );
    }
}
