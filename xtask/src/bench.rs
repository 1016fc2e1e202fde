//! `cargo xtask bench`: TCP throughput app -> internet host through the eBPF data path
//! (ACL + conntrack at the app port, source NAT at the NI veth and at the uplink), and
//! through the very same namespaces and veths with the programs detached and plain
//! routes instead of NAT: both measured in this run, printed side by side.

use std::{
    path::Path,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::demo::{build_world, output, sh, step, ALLOWED_SITE, APPS, GW, INTERNET, STATE_DIR, ZEDBOX};

const CONFIG: &str = r#"# cargo xtask bench: one NI on eth0, app1 may go anywhere.
[[uplink]]
name = "eth0"

[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "app1"
netns = "app1"
[[app.interface]]
network = "ni1"
ip = "10.10.1.2"
acl = [{ id = 1, match = { ip = "0.0.0.0/0" } }]
"#;

const SECONDS: u32 = 5;
const ROUNDS: usize = 3;
const PIN_DIR: &str = "/sys/fs/bpf/netns-agent";

pub fn run(agent_bin: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join("netns-agent-bench");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.toml");
    std::fs::write(&config, CONFIG)?;
    let _cleanup = Cleanup { agent_bin: agent_bin.to_path_buf(), config: config.clone() };
    for ns in [ZEDBOX, GW, INTERNET].iter().chain(APPS.iter()).chain(["ni1"].iter()) {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("netns {ns} already exists (a demo still up?)");
        }
    }
    step("world and agent");
    build_world()?;
    let mut agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ZEDBOX}"))
        .arg(agent_bin)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(STATE_DIR).join("state.json").exists() {
        if agent.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("the agent did not apply the bench config");
        }
        sleep(Duration::from_millis(100));
    }

    step("program sizes (bpftool prog show)");
    let progs = output(&["bpftool", "prog", "show", "--json"]);
    let progs: serde_json::Value = serde_json::from_str(&progs).unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if name.starts_with("app_port") || name.starts_with("nat_") {
            seen.insert(name.to_string(), (p["bytes_xlated"].as_u64().unwrap_or(0) / 8, p["bytes_jited"].as_u64().unwrap_or(0)));
        }
    }
    for (name, (insns, jited)) in &seen {
        println!("  {name:<20} {insns:>5} instructions (xlated), {jited:>6} bytes jited");
    }

    step(&format!("iperf3 TCP app1 -> {ALLOWED_SITE}, {ROUNDS} x {SECONDS} s each way of forwarding"));
    let mut ebpf = Vec::new();
    for _ in 0..ROUNDS {
        ebpf.push(iperf()?);
    }
    // Stop the agent (the pinned programs stay), then detach every program by unpinning
    // its links, and route the same path without translation.
    let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
    agent.wait()?;
    for sub in ["ni1", "@agent"] {
        let dir = Path::new(PIN_DIR).join(sub);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    sh(&["ip", "-n", ZEDBOX, "route", "add", "10.10.1.0/24", "via", "169.254.100.2", "dev", "veth1"])?;
    sh(&["ip", "-n", GW, "route", "add", "10.10.1.0/24", "via", "192.168.0.2"])?;
    let mut bare = Vec::new();
    for _ in 0..ROUNDS {
        bare.push(iperf()?);
    }
    let (e, b) = (median(&mut ebpf), median(&mut bare));
    step("result (median of the rounds)");
    let rounds = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    println!("  {:<52} {:>8.2} Gbit/s  (rounds: {})", "eBPF path (ACL, conntrack, 2x SNAT):", e, rounds(&ebpf));
    println!("  {:<52} {:>8.2} Gbit/s  (rounds: {})", "same namespaces and veths, no programs, no NAT:", b, rounds(&bare));
    println!("  {:<52} {:>8.2}", "ratio eBPF / no programs:", e / b);
    Ok(())
}

/// One iperf3 run; Gbit/s received.
fn iperf() -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", INTERNET, "iperf3", "-s", "-1", "-B", ALLOWED_SITE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", "app1", "iperf3", "-J", "-t", &SECONDS.to_string(), "-c", ALLOWED_SITE])
        .output()?;
    server.wait().ok();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().with_context(|| format!("iperf3 failed: {}", v["error"]))?;
    Ok(bps / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Cleanup {
    agent_bin: std::path::PathBuf,
    config: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        step("cleanup");
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .args(["down", "--config"])
            .arg(&self.config)
            .stderr(Stdio::null())
            .status();
        for ns in [ZEDBOX, GW, INTERNET].iter().chain(APPS.iter()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}
