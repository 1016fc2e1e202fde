//! The bench's load and its yardstick: iperf3 for TCP throughput, wrk against nginx for
//! new TCP connections per second (each request on a connection of its own), and the
//! bare twin: the bench's path built a second time beside the first, in namespaces of
//! its own, with plain routes and no programs, no rules, no NAT. Every figure the bench
//! prints is measured round by round against the twin, one right after the other, so
//! that the machine's drift (other load, frequency, the page cache) hits both alike.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};
use netns_world::{add_netns, ip, World, INTERNET_IP};

use crate::demo::{wait_listening, INTERNET};

/// Where the load runs: the app's netns (client) and the internet host's (server).
#[derive(Clone, Copy)]
pub struct Ends {
    pub app: &'static str,
    pub internet: &'static str,
}

/// The bench's path: app1 through the agent's NI and zedbox.
pub const BENCH: Ends = Ends { app: "app1", internet: INTERNET };
/// The bare twin's ends.
pub const TWIN: Ends = Ends { app: "bare-app1", internet: "bare-internet" };
const TWIN_WORLD: World<'static> = World { zedbox: "bare-zedbox", gw: "bare-gw", internet: TWIN.internet };
const TWIN_NI: &str = "bare-ni1";
/// Every netns of the twin (to check for and to remove).
pub const TWIN_NAMESPACES: [&str; 5] = [TWIN.app, TWIN_NI, TWIN_WORLD.zedbox, TWIN_WORLD.gw, TWIN_WORLD.internet];

/// nginx's port; iperf3's default.
const HTTP_PORT: u16 = 80;
const IPERF_PORT: u16 = 5201;

/// Builds the twin: what the demo's world and the agent's NI make of the bench's path,
/// the same interfaces in the same places (app port veth into the NI's bridge, the NI's
/// veth to zedbox, zedbox's bridge uplink to gw, gw to the internet host), the same
/// addresses, and only routes: zedbox and gw route the app's subnet back.
pub fn build_twin() -> Result<()> {
    for ns in [TWIN_WORLD.zedbox, TWIN_NI, TWIN.app] {
        add_netns(ns)?;
    }
    TWIN_WORLD.build(1)?;
    let (z, ni, app) = (TWIN_WORLD.zedbox, TWIN_NI, TWIN.app);
    ip(&["-n", ni, "link", "add", "bn1", "type", "bridge", "mcast_snooping", "0"])?;
    ip(&["-n", ni, "addr", "add", "10.10.1.1/24", "dev", "bn1"])?;
    ip(&["-n", ni, "link", "set", "bn1", "up"])?;
    ip(&["-n", app, "link", "add", "nbu1x1.1", "type", "veth", "peer", "name", "nbu1x1", "netns", ni])?;
    ip(&["-n", ni, "link", "set", "nbu1x1", "master", "bn1", "up"])?;
    ip(&["-n", app, "addr", "add", "10.10.1.2/24", "dev", "nbu1x1.1"])?;
    ip(&["-n", app, "link", "set", "nbu1x1.1", "up"])?;
    ip(&["-n", app, "route", "add", "default", "via", "10.10.1.1"])?;
    ip(&["-n", z, "link", "add", "veth1", "type", "veth", "peer", "name", "veth1.1", "netns", ni])?;
    ip(&["-n", z, "addr", "add", "169.254.100.1/30", "dev", "veth1"])?;
    ip(&["-n", z, "link", "set", "veth1", "up"])?;
    ip(&["-n", ni, "addr", "add", "169.254.100.2/30", "dev", "veth1.1"])?;
    ip(&["-n", ni, "link", "set", "veth1.1", "up"])?;
    ip(&["-n", ni, "route", "add", "default", "via", "169.254.100.1"])?;
    ip(&["-n", z, "route", "add", "10.10.1.0/24", "via", "169.254.100.2"])?;
    ip(&["-n", TWIN_WORLD.gw, "route", "add", "10.10.1.0/24", "via", "192.168.0.2"])?;
    for ns in [z, ni] {
        ip(&["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    }
    Ok(())
}

/// nginx on the internet host of `ends` (port 80, a 3-byte answer, no access log), one
/// process (no master: killing the child we hold stops it all, no orphaned worker); its
/// files under `dir`. Both ends are set up as a load generator and a busy server are:
/// no TIME_WAIT (at thousands of connections a second it would hold every ephemeral
/// port: the client closes first when it has read the whole answer). The client keeps
/// the kernel's ephemeral range. Both paths' ends alike.
pub fn start_nginx(ends: Ends, dir: &Path) -> Result<Child> {
    for ns in [ends.app, ends.internet] {
        ip(&["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_max_tw_buckets=0"])?;
    }
    let dir = nginx_dir(dir, ends);
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "master_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  \
             uwsgi_temp_path {d};\n  scgi_temp_path {d};\n  server {{\n    listen {INTERNET_IP}:{HTTP_PORT} backlog=4096;\n    \
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
        ),
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", ends.internet, "nginx", "-c"])
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    wait_listening(ends.internet, INTERNET_IP, HTTP_PORT)?;
    Ok(child)
}

/// nginx's files for `ends` (its config, pid file and error log).
fn nginx_dir(dir: &Path, ends: Ends) -> PathBuf {
    dir.join(format!("nginx-{}", ends.internet))
}

/// One wrk run from the app of `ends` for `seconds`: new TCP connections per second
/// (`Connection: close`: one request per connection), 2 threads, 16 connections open.
/// A run with failed connections or non-200 answers is an error: the path lost them.
pub fn connection_rate(ends: Ends, seconds: u32, dir: &Path) -> Result<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", ends.app, "wrk", "-t2", "-c16", &format!("-d{seconds}s"), "-H", "Connection: close"])
        .arg(format!("http://{INTERNET_IP}:{HTTP_PORT}/"))
        .output()
        .context("starting wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk in {} failed: {text}{}", ends.app, String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim).map(str::to_string));
    if let Some(errors) = field("Socket errors:").or_else(|| field("Non-2xx or 3xx responses:")) {
        let log = std::fs::read_to_string(nginx_dir(dir, ends).join("error.log")).unwrap_or_default();
        bail!("wrk in {}: connections failed ({errors}):\n{text}\nnginx: {log}", ends.app);
    }
    field("Requests/sec:").and_then(|r| r.parse().ok()).with_context(|| format!("wrk output: {text}"))
}

/// One iperf3 run from the app of `ends` for `seconds`; Gbit/s received.
pub fn throughput(ends: Ends, seconds: u32) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", ends.internet, "iperf3", "-s", "-1", "-B", INTERNET_IP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let out = wait_listening(ends.internet, INTERNET_IP, IPERF_PORT).and_then(|()| {
        Ok(Command::new("ip").args(["netns", "exec", ends.app, "iperf3", "-J", "-t", &seconds.to_string(), "-c", INTERNET_IP]).output()?)
    });
    // The server serves one client (-1) and exits; kill it only if no client came.
    if out.is_err() {
        let _ = server.kill();
    }
    server.wait().ok();
    let out = out?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| format!("iperf3 failed: {}", v["error"]))?;
    Ok(bps / 1e9)
}
