//! `cargo xtask demo`: the seed scenario as far as the agent goes today.
//!
//! A `zedbox` netns plays EVE's host namespace and runs the agent; two NIs share the
//! subnet 10.10.1.0/24; app1 and app2 sit on ni1, app3 on ni2 with app1's very address.
//! Every check prints PASS or FAIL; any FAIL makes the demo fail.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const ZEDBOX: &str = "zedbox";
const APPS: [&str; 3] = ["app1", "app2", "app3"];
const NIS: [&str; 2] = ["ni1", "ni2"];
const STATE_DIR: &str = "/run/netns-agent";

const CONFIG: &str = r#"# The demo scenario (cargo xtask demo).
[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"

# Same subnet as ni1: each NI is its own namespace.
[[network]]
name = "ni2"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"

[[app]]
name = "app1"
netns = "app1"
[[app.interface]]
network = "ni1"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "10.10.1.3/32", protocol = "tcp", fport = 80 } },
  { id = 2, match = { protocol = "udp" }, action = "drop" },
]

[[app]]
name = "app2"
netns = "app2"
[[app.interface]]
network = "ni1"
ip = "10.10.1.3"
acl = [
  { id = 1, match = { ip = "10.10.1.0/24", protocol = "tcp", fport = 80 } },
]

[[app]]
name = "app3"
netns = "app3"
[[app.interface]]
network = "ni2"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "0.0.0.0/0" } },
]
"#;

/// A static-file HTTP server. Not `python3 -m http.server`: that one looks up its own
/// name in DNS at start, which sends a query toward the host's resolver.
pub const HTTP_SERVER: &str = r#"
import functools, http.server, socketserver, sys
ip, port, root = sys.argv[1], int(sys.argv[2]), sys.argv[3]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
socketserver.TCPServer.allow_reuse_address = True
with socketserver.ThreadingTCPServer((ip, port), handler) as server:
    server.serve_forever()
"#;

struct Demo {
    agent_bin: PathBuf,
    config: PathBuf,
    web_root: PathBuf,
    agent: Option<Child>,
    servers: Vec<Child>,
}

pub fn run(agent_bin: &Path, keep: bool) -> Result<()> {
    for ns in NIS.iter().chain(APPS.iter()).chain([ZEDBOX].iter()) {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("netns {ns} already exists: a previous demo is still up (remove it with `cargo xtask demo` cleanup or `ip netns del`)");
        }
    }
    let dir = std::env::temp_dir().join("netns-agent-demo");
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo {
        agent_bin: agent_bin.to_path_buf(),
        config: dir.join("demo.toml"),
        web_root: dir.clone(),
        agent: None,
        servers: Vec::new(),
    };
    std::fs::write(&demo.config, CONFIG)?;
    let result = demo.scenario();
    if keep && result.is_ok() {
        println!("\n--keep: everything stays up. Explore with e.g.");
        println!("  ip netns exec app1 curl 10.10.1.3");
        println!("  {} flows", agent_bin.display());
        println!("  bpftool map dump pinned /sys/fs/bpf/netns-agent/CT_V1");
        println!("Remove it with:");
        let pids: Vec<String> = demo.agent.iter().chain(demo.servers.iter()).map(|c| c.id().to_string()).collect();
        println!("  kill {}; nsenter --net=/run/netns/{ZEDBOX} {} down --config {}; ip netns del app1; ip netns del app2; ip netns del app3; ip netns del {ZEDBOX}",
            pids.join(" "), agent_bin.display(), demo.config.display());
        // The agent and the web servers keep running; this process must not reap them.
        std::mem::forget(demo);
    }
    result
}

impl Demo {
    fn scenario(&mut self) -> Result<()> {
        step("namespaces: zedbox (the agent's netns) and the apps' netns");
        for ns in [ZEDBOX].iter().chain(APPS.iter()) {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }

        step("agent: netns-agent run (inside zedbox)");
        let agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(agent);
        self.wait_for_agent()?;

        step("web servers: app1, app2 and app3 each serve their own page on :80");
        for (app, ip) in [("app1", "10.10.1.2"), ("app2", "10.10.1.3"), ("app3", "10.10.1.2")] {
            let root = self.web_root.join(app);
            std::fs::create_dir_all(&root)?;
            std::fs::write(root.join("index.html"), format!("{app}-data\n"))?;
            let child = Command::new("ip")
                .args(["netns", "exec", app, "python3", "-c", HTTP_SERVER, ip, "80"])
                .arg(&root)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            self.servers.push(child);
        }
        for (app, ip) in [("app1", "10.10.1.2"), ("app2", "10.10.1.3"), ("app3", "10.10.1.2")] {
            wait_listening(app, ip, 80)?;
        }

        step("checks");
        let mut failed = 0;
        let mut check = |name: &str, ok: bool| {
            println!("  {} {name}", if ok { "PASS" } else { "FAIL" });
            failed += (!ok) as u32;
        };
        check("app1 -> app2:80 allowed by app1's ACE 1 (ip+protocol+fport)", curl("app1", &[], "10.10.1.3:80").as_deref() == Some("app2-data"));
        check("app2 -> app1:80 allowed by app2's ACE 1", curl("app2", &[], "10.10.1.2:80").as_deref() == Some("app1-data"));
        check("app1 -> app2:22 blocked (default drop)", !tcp_connects("app1", "10.10.1.3", 22));
        check("app1 -> app2 udp/5353 dropped by app1's ACE 2", !udp_roundtrip("app1", "10.10.1.3", 5353));
        check("app3 reaches the gateway's DNS port (implicit rule)", udp_sent("app3", "10.10.1.1", 53));
        check("zedbox -> app1 (10.10.1.2 via veth1): EVE-initiated, gets app1's page",
            curl_zedbox("veth1", "10.10.1.2:80").as_deref() == Some("app1-data"));
        check("zedbox -> app3 (the same 10.10.1.2, via veth2): gets app3's page",
            curl_zedbox("veth2", "10.10.1.2:80").as_deref() == Some("app3-data"));
        check("app3 -> app1's address on ni2 finds nothing (NIs are isolated)", !tcp_connects("app3", "10.10.1.3", 80));

        step("flow table: netns-agent flows");
        sh(&[self.agent_bin.to_str().unwrap(), "flows"])?;
        let flows = Command::new(&self.agent_bin).args(["flows", "--json"]).output()?;
        let flows = String::from_utf8_lossy(&flows.stdout);
        check("a dropped flow is recorded with app1's default-drop mark 0x01bfffff", flows.contains("\"mark\": \"0x01bfffff\""));
        check("the allowed app1 -> app2 flow carries mark 0x01400001", flows.contains("\"mark\": \"0x01400001\""));
        check("EVE-initiated flows carry ACE id 0xa", flows.contains("\"mark\": \"0x0100000a\""));

        step("maps are readable with bpftool (BTF)");
        sh(&["sh", "-c", "bpftool map dump pinned /sys/fs/bpf/netns-agent/CT_V1 | head -40"])?;
        if failed > 0 {
            bail!("{failed} demo checks failed");
        }
        println!("\nall demo checks passed");
        Ok(())
    }

    fn wait_for_agent(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = Path::new(STATE_DIR).join("state.json");
        while Instant::now() < deadline {
            if state.exists() {
                return Ok(());
            }
            if let Some(status) = self.agent.as_mut().unwrap().try_wait()? {
                bail!("the agent exited before applying the config: {status}");
            }
            sleep(Duration::from_millis(100));
        }
        bail!("the agent did not apply the config within 30 s")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        step("cleanup");
        for mut s in self.servers.drain(..) {
            s.kill().ok();
            s.wait().ok();
        }
        if let Some(mut agent) = self.agent.take() {
            nix_kill_term(agent.id());
            agent.wait().ok();
        }
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .args(["down", "--config"])
            .arg(&self.config)
            .status();
        for ns in APPS.iter().chain([ZEDBOX].iter()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn nix_kill_term(pid: u32) {
    let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
}

fn step(msg: &str) {
    println!("\n=== {msg}");
}

fn sh(args: &[&str]) -> Result<()> {
    crate::run(Command::new(args[0]).args(&args[1..]))
}

fn wait_listening(ns: &str, ip: &str, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = Command::new("ip").args(["netns", "exec", ns, "ss", "-Hltn", &format!("src {ip}:{port}")]).output()?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("server in {ns} on {ip}:{port} did not start")
}

fn curl(ns: &str, extra: &[&str], target: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "3"])
        .args(extra)
        .arg(format!("http://{target}/"))
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn curl_zedbox(dev: &str, target: &str) -> Option<String> {
    curl(ZEDBOX, &["--interface", dev], target)
}

fn python(ns: &str, code: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn tcp_connects(ns: &str, ip: &str, port: u16) -> bool {
    python(ns, &format!("import socket; socket.create_connection(('{ip}', {port}), timeout=2)"))
}

/// Sends a UDP datagram and waits for any answer (a reply or an ICMP error).
fn udp_roundtrip(ns: &str, ip: &str, port: u16) -> bool {
    python(ns, &format!(
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect(('{ip}', {port})); s.send(b'x'); s.recv(100)"
    ))
}

/// The gateway has no DNS server yet: an ICMP port-unreachable back proves the datagram
/// crossed the app port.
fn udp_sent(ns: &str, ip: &str, port: u16) -> bool {
    python(ns, &format!(
        "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect(('{ip}', {port})); s.send(b'x')\ntry:\n  s.recv(100)\nexcept ConnectionRefusedError:\n  sys.exit(0)\nsys.exit(1)"
    ))
}

