//! The world outside the agent, built once for the integration tests (`netns-tests`) and
//! `cargo xtask demo` / `bench`, so that both exercise the agent in the same surroundings.
//!
//! The seed's world: the box (`zedbox`, where the agent runs) has uplinks `eth0..` to the
//! router `gw` ([`World`]); behind gw the internet host; clouds behind gw run strongSwan
//! responders ([`Responder`]). The helper programs that run in it (mock DNS, HTTP server,
//! the VM's relay, the DHCP client script) are files of `py/` and `sh/`, embedded
//! ([`programs`]).
//!
//! The world is named by its user: the demo uses the seed's names (`zedbox`, `gw`,
//! `internet`), each test scenario unique ones, so tests can run beside each other. What
//! it builds is torn down by its user too (the demo's and the scenario's `Drop`), which
//! also owns the processes started here: every spawned child goes into the caller's list
//! before anything can fail, so a failure never leaves a server unreaped.

pub mod programs;
mod strongswan;
mod world;

use std::{
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

pub use strongswan::Responder;
pub use world::World;

/// The uplink that the world builds for a switch NI: a plain veth to gw, no bridge.
pub const SWITCH_UPLINK: usize = 3;
/// The internet host's address (the seed's github.com / zededa.com).
pub const INTERNET_IP: &str = "10.99.0.10";
/// The seed's second site on the internet host (google.com), blocked by the seed's ACLs.
pub const BLOCKED_SITE_IP: &str = "10.98.0.10";
/// The seed's DNS server on the internet host ([`programs::MOCK_DNS`]).
pub const DNS_SERVER_IP: &str = "10.99.0.53";
/// The address every cloud serves on (the seed's 192.168.0.1, behind each VPN).
pub const CLOUD_LAN_IP: &str = "192.168.0.1";

/// Runs `cmd` to its end; an error (with its stderr) unless it succeeded.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// A new netns `ns` with its loopback up.
pub fn add_netns(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Starts `args` in `ns` (`ip netns exec`), its output discarded: a server that runs until
/// its owner kills it.
pub fn spawn_in(ns: &str, args: &[&str]) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} in {ns}", args[0]))
}

/// Polls `f` every 100 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        sleep(Duration::from_millis(100));
    }
    false
}

/// The protocol of a socket [`wait_listening`] waits for.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Waits until `ss` in `ns` shows a listening socket on ip:port. A wait, not a timed
/// check: it returns as soon as the server listens.
pub fn wait_listening(ns: &str, ip: &str, port: u16, proto: Proto, timeout: Duration) -> Result<()> {
    let flags = match proto {
        Proto::Tcp => "-Hltn",
        Proto::Udp => "-Hlun",
    };
    let filter = format!("src {ip}:{port}");
    let listens = || {
        Command::new("ip")
            .args(["netns", "exec", ns, "ss", flags, &filter])
            .output()
            .is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).trim().is_empty())
    };
    if !wait_until(timeout, listens) {
        bail!("no server in {ns} on {ip}:{port} (ss {flags})");
    }
    Ok(())
}

/// Names `servers` as the resolvers of netns `ns`: `ip netns exec` bind-mounts
/// /etc/netns/<ns>/resolv.conf over /etc/resolv.conf. Whoever calls it removes
/// /etc/netns/<ns> at the end.
pub fn resolv_conf(ns: &str, servers: &[&str]) -> Result<()> {
    let dir = std::path::Path::new("/etc/netns").join(ns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let conf: String = servers.iter().map(|s| format!("nameserver {s}\n")).collect();
    std::fs::write(dir.join("resolv.conf"), conf).with_context(|| format!("writing {}/resolv.conf", dir.display()))
}
