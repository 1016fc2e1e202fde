//! Exports the programs' global BPF functions (bpf-linker makes every other symbol
//! internal, and an internal function's BTF linkage is static: the verifier checks it
//! inline, on every path of its caller, instead of once). Only for the BPF target: the
//! host build of the crate is an empty `main`.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg=--export=acl_search");
    }
}
