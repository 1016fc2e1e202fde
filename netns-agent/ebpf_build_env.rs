// Shared by netns-agent/build.rs and xtask (`include!`): both build the eBPF object the
// same way.

/// Variables of the surrounding build that are the host's, not the eBPF build's (its
/// toolchain, compiler, flags, target dir): removed from the eBPF build's environment.
const HOST_BUILD_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
];
