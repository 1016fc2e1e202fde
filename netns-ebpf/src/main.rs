//! TC programs of the netns-ebpf data plane.
//!
//! The agent loads this object once; its programs serve every NI and the agent's own
//! netns, and learn an interface's NI (zone) from IFZONE_V1 by the interface's ifindex,
//! which the agent makes unique across namespaces. Parsing, ACL and NAT
//! logic live in `netns-ebpf-common` (host-tested); this crate wires them to the kernel:
//! packet reads and rewrites, map lookups, counters, verdicts.
//!
//! The crate is a member of the host workspace, so that one `Cargo.lock` and plain
//! `cargo build`/`clippy --workspace` cover it; only the BPF target compiles the programs
//! (the agent's build.rs builds them with aya-build: nightly, build-std). On the host the
//! binary is an empty `main`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// bpfel has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF's atomic add.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// Map keys and values go to the helpers by reference: by value, each would be copied onto
// the 512-byte stack first.
#![cfg_attr(target_arch = "bpf", allow(clippy::needless_borrows_for_generic_args))]

#[cfg(target_arch = "bpf")]
mod app_port;
#[cfg(target_arch = "bpf")]
mod budget;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod fast;
#[cfg(target_arch = "bpf")]
mod frag;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod rewrite;
#[cfg(target_arch = "bpf")]
mod skb;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The host build of the crate (`cargo clippy --workspace`): no programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
