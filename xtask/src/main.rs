//! Developer tasks: `cargo xtask setup | lint | test [--vm] | demo | bench`.

mod bench;
mod demo;
mod load;
mod reports;
mod scale;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what builds and tests need (idempotent; fast when all is present).
    Setup,
    /// Setup, build, then run every unit and integration test.
    Test {
        /// Then also boot Debian's stock kernel (6.1: real ESP, no TCX) in QEMU and run
        /// every integration test there, VPNs on kernel xfrm, then (no filter) the demo.
        #[arg(long)]
        vm: bool,
        /// Only the VM stage (skips the host's unit and integration tests).
        #[arg(long)]
        vm_only: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the demo scenario: namespaces, the agent, allowed and blocked connections,
    /// the flow table; cleans up unless --keep.
    Demo {
        #[arg(long)]
        keep: bool,
        /// Run the agent from the seed scenario's EdgeDevConfig (tests/eve/scenario.json)
        /// and the demo's bindings instead of the hand-written TOML.
        #[arg(long)]
        eve: bool,
        /// With `[agent] fast_path = false`: every packet on the kernel's path.
        #[arg(long)]
        no_fast_path: bool,
    },
    /// Throughput through the eBPF path vs the same path without programs, side by side;
    /// apply times; apply at scale.
    Bench {
        /// Only the apply-at-scale part.
        #[arg(long)]
        scale_only: bool,
        /// Instead of the bench: where the CPU goes (`perf record -a`) while wrk opens
        /// new connections and while iperf3 streams, through the eBPF path (10 ACEs)
        /// and through the bare twin: the symbols where the two differ most, in CPU
        /// microseconds per connection and per MB.
        #[arg(long, conflicts_with = "scale_only")]
        profile: bool,
        /// Only the apply times: changes, ACL swaps (as the agent logs them), restarts.
        #[arg(long, conflicts_with_all = ["scale_only", "profile"])]
        apply_only: bool,
        /// Only new connections per second through the fast path (10 ACEs): what the
        /// programs cost per connection, then 12 rounds each beside the twin, every
        /// round's ratio shown, then the same on the same namespaces with no programs:
        /// an A/B check of a data-path change in a few minutes (it tells about five
        /// percent from noise here).
        #[arg(long, conflicts_with_all = ["scale_only", "profile", "apply_only"])]
        connections_only: bool,
        /// With --connections-only: the app's ACL has this many ACEs (the last allows,
        /// as in the whole bench).
        #[arg(long, requires = "connections_only", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        aces: u32,
    },
    /// `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`, and
    /// clippy on the eBPF programs for the BPF target (nightly). CI runs it before the
    /// tests.
    Lint,
}

/// Debian packages the build, tests and demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "bpftool",
    "curl",
    "python3",
    "util-linux",
    "iptables",
    "nftables",
    "tcpdump",
    "iperf3",
    // The bench's new-connection load: wrk against nginx.
    "wrk",
    "nginx-light",
    "iputils-ping",
    "python3-scapy",
    "dnsmasq-base",
    "busybox-static",
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libstrongswan-extra-plugins",
    // promtool: the tests check the agent's /metrics with it.
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() {
    if let Err(e) = dispatch(Cli::parse().command) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn dispatch(task: Task) -> Result<()> {
    match task {
        Task::Setup => setup(),
        Task::Test { vm, vm_only, args } => test(vm || vm_only, !vm_only, &args),
        Task::Demo { keep, eve, no_fast_path } => {
            setup()?;
            build_agent()?;
            demo::run(&workspace_root().join("target/debug/netns-agent"), keep, eve, !no_fast_path)
        }
        Task::Lint => lint(),
        Task::Bench { scale_only, profile, apply_only, connections_only, aces } => {
            setup()?;
            // Optimised, as a device runs it: the agent's CPU and apply times are figures.
            step("build: netns-agent (release)");
            run(Command::new("cargo").current_dir(workspace_root()).args(["build", "--release", "-p", "netns-agent"]))?;
            let part = if profile {
                apt_install(&["linux-perf"])?;
                bench::Part::Profile
            } else if scale_only {
                bench::Part::ScaleOnly
            } else if apply_only {
                bench::Part::ApplyOnly
            } else if connections_only {
                bench::Part::ConnectionsOnly { aces }
            } else {
                bench::Part::All
            };
            bench::run(&workspace_root().join("target/release/netns-agent"), part)
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn step(msg: &str) {
    eprintln!("==> {msg}");
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Waits until the agent `child` has applied its config: its record names it and counts
/// its first apply (the record itself is written before the first NI is touched).
pub fn wait_applied(state_dir: &Path, child: &mut std::process::Child, limit: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + limit;
    let pid = child.id();
    loop {
        if reports::Record::read(state_dir).is_some_and(|r| r.agent_pid == pid && r.applies >= 1) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("the agent exited before applying the config: {status}");
        }
        if std::time::Instant::now() > deadline {
            bail!("the agent did not apply the config within {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    step("setup: Debian packages");
    apt_install(DEBIAN_PACKAGES)?;

    step("setup: nightly rust-src (eBPF builds core from source)");
    let installed = output(Command::new("rustup").args(["+nightly", "component", "list", "--installed"]))
        .context("no nightly toolchain: the eBPF build needs the machine's preinstalled nightly")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    present");
    } else {
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }

    step(&format!("setup: bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM"));
    let have = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        eprintln!("    present ({})", have.trim());
    } else {
        install_bpf_linker()?;
    }
    Ok(())
}

/// Installs the Debian packages of `packages` that are missing.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p])).map(|s| !s.contains("install ok installed")).unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        eprintln!("    all present");
        return Ok(());
    }
    eprintln!("    installing {}", missing.join(" "));
    let _no_services = NoServiceStarts::hold()?;
    run(Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        // dpkg unpacks under TMPDIR; a small or cleaned /tmp broke installs here.
        .env("TMPDIR", "/var/tmp"))
}

/// While held, packages do not start their services (nginx-light would start nginx in
/// the host's netns): a `policy-rc.d` that refuses them, unless the machine has one.
struct NoServiceStarts(Option<PathBuf>);

impl NoServiceStarts {
    fn hold() -> Result<NoServiceStarts> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(NoServiceStarts(None));
        }
        std::fs::write(&path, "#!/bin/sh\n# cargo xtask setup: no service starts while it installs packages\nexit 101\n")
            .with_context(|| format!("writing {}", path.display()))?;
        let mut perms = std::fs::metadata(&path)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms)?;
        Ok(NoServiceStarts(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// bpf-linker needs an LLVM 22 to link against; nightly ships one as a shared library.
/// Give the build a prefix with an (empty) llvm-config and the library under lib/.
/// The prefix stays on disk: the installed binary's runpath points into it.
fn install_bpf_linker() -> Result<()> {
    let home = std::env::var("HOME").context("HOME not set")?;
    let prefix = PathBuf::from(home).join(".local/share/bpf-linker-llvm");
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context("rustc +nightly --print sysroot")?;
    let sysroot_lib = PathBuf::from(sysroot.trim()).join("lib");
    std::fs::create_dir_all(prefix.join("bin"))?;
    std::fs::create_dir_all(prefix.join("lib"))?;
    let llvm_config = prefix.join("bin/llvm-config");
    std::fs::write(&llvm_config, "")?;
    run(Command::new("chmod").arg("+x").arg(&llvm_config))?;
    let mut versioned = None;
    for entry in std::fs::read_dir(&sysroot_lib)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") {
            let link = prefix.join("lib").join(&name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(entry.path(), &link)?;
            if name.starts_with("libLLVM.so.") {
                versioned = Some(entry.path());
            }
        }
    }
    let versioned = versioned.context("no libLLVM.so.* in the nightly sysroot")?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(versioned, &link)?;
    eprintln!("    building bpf-linker (about a minute)");
    run(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", &prefix))
}

fn lint() -> Result<()> {
    step("lint: cargo fmt --check");
    run(Command::new("cargo").current_dir(workspace_root()).args(["fmt", "--all", "--check"]))?;
    setup()?;
    step("lint: cargo clippy --workspace --all-targets -D warnings");
    run(Command::new("cargo").current_dir(workspace_root()).args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    // On the host the eBPF crate is an empty main: its programs are linted for their
    // own target, with the toolchain that builds them (its own target dir, so that the
    // host build's stays as it is).
    step("lint: cargo +nightly clippy -p netns-ebpf (bpfel-unknown-none) -D warnings");
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .args(["+nightly", "clippy", "-p", "netns-ebpf", "--release", "--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--target-dir", "target/ebpf-clippy", "--", "-D", "warnings"]))
}

/// The agent, with the eBPF programs its build.rs builds and embeds.
fn build_agent() -> Result<()> {
    step("build: netns-agent (and the eBPF programs it embeds)");
    run(Command::new("cargo").current_dir(workspace_root()).args(["build", "-p", "netns-agent"]))
}

fn test(vm: bool, host: bool, args: &[String]) -> Result<()> {
    setup()?;
    if vm {
        step("setup: QEMU and Debian's stock kernel for --vm");
        apt_install(vm::VM_PACKAGES)?;
    }
    build_agent()?;
    let agent = workspace_root().join("target/debug/netns-agent");
    if host {
        step("test: unit tests (plain `cargo test`: the workspace's default members)");
        run(Command::new("cargo").current_dir(workspace_root()).arg("test").arg("--").args(args))?;
        step("test: integration tests (netns-tests: root, namespaces, one at a time)");
        run(Command::new("cargo")
            .current_dir(workspace_root())
            .env("NETNS_AGENT_BIN", &agent)
            .args(["test", "-p", "netns-tests", "--", "--test-threads=1"])
            .args(args))?;
    }
    if vm {
        vm::run_tests(&agent, args)?;
    }
    Ok(())
}
