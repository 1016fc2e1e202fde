//! Harness for integration tests in real namespaces.
//!
//! Each `Scenario` gets its own names (a per-process, per-scenario id), its own "zedbox"
//! netns in which the agent runs (so the host's own netns is never touched), its own pin
//! and state directories, and cleans everything up in `Drop`, also when the test panics.
//! Traffic only ever goes between namespaces the scenario made. The world outside the box
//! (uplinks, router, internet host, clouds and their IKE responders) is built by
//! `netns-world`, the same code that builds the demo's.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use netns_agent::{
    flows::{FlowRecord, FlowsReport},
    services::dns::DnsLogEntry,
    state::AppliedState,
    status::{NetworkStatus, StatusReport},
};

pub mod frame;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A helper script of `tests/py/`, by path (the tests run it in app namespaces).
pub fn py_script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name).display().to_string()
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("NETNS_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/netns-agent"))
}

fn require_root() {
    assert!(effective_uid() == 0, "integration tests create namespaces and load eBPF programs: run them as root (cargo xtask test)");
    assert!(agent_bin().exists(), "{} is missing: run `cargo xtask test`", agent_bin().display());
}

/// /proc/self belongs to the process's effective uid.
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

pub struct Scenario {
    pub id: String,
    pub zedbox: String,
    /// The router behind the uplinks and the "internet" host behind it (with uplinks).
    pub gw: String,
    pub inet: String,
    uplinks: usize,
    nis: Vec<(String, String)>,
    apps: Vec<(String, String)>,
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    agent: Option<Child>,
    children: Vec<Child>,
    /// Namespaces and directories added after creation (clouds, responders).
    extra_ns: Vec<String>,
    extra_dirs: Vec<PathBuf>,
    /// `[agent] fast_path` of the configs written from here on: NETNS_TEST_FAST_PATH
    /// ("on" or "off") unless a test sets it; neither: the agent's default (on).
    pub fast_path: Option<bool>,
}

impl Scenario {
    /// `template` is a config in which `@niN` / `@appN` stand for this scenario's unique
    /// names; `nis` and `apps` list the placeholders used. The apps' netns are created here
    /// (they exist before the agent attaches them, as on a device).
    pub fn new(nis: &[&str], apps: &[&str], template: &str) -> Scenario {
        Scenario::with_uplinks(nis, apps, 0, template)
    }

    /// Also builds the world outside the box, as the seed does: in zedbox, uplinks
    /// `eth0..` are bridges holding a veth `kethI` to the router `gw` (192.168.I.1, the
    /// uplink 192.168.I.2/24 with a default route via it); behind gw, the internet host
    /// `inet` at INET_IP. `eth3` (SWITCH_UPLINK) is a plain veth without an address to
    /// gw's `up3`, for a switch NI to bridge.
    pub fn with_uplinks(nis: &[&str], apps: &[&str], uplinks: usize, template: &str) -> Scenario {
        require_root();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let nis: Vec<(String, String)> = nis.iter().map(|p| (p.to_string(), format!("tn{id}{}", &p[2..]))).collect();
        let apps: Vec<(String, String)> = apps.iter().map(|p| (p.to_string(), format!("ta{id}x{}", &p[3..]))).collect();
        let s = Scenario {
            zedbox: format!("tz{id}"),
            gw: format!("tg{id}"),
            inet: format!("ti{id}"),
            uplinks,
            config_path: std::env::temp_dir().join(format!("netns-agent-test-{id}.toml")),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/netns-agent-test-{id}")),
            state_dir: PathBuf::from(format!("/run/netns-agent-test-{id}")),
            id,
            nis,
            apps,
            agent: None,
            children: Vec::new(),
            extra_ns: Vec::new(),
            extra_dirs: Vec::new(),
            fast_path: fast_path_from_env(),
        };
        for ns in std::iter::once(s.zedbox.clone()).chain(s.apps.iter().map(|a| a.1.clone())) {
            netns_world::add_netns(&ns).unwrap_or_else(|e| panic!("{e:#}"));
        }
        if uplinks > 0 {
            s.build_world();
        }
        s.write_config(template);
        s
    }

    /// The world of `netns_world::World` under this scenario's names.
    fn world(&self) -> netns_world::World<'_> {
        netns_world::World { zedbox: &self.zedbox, gw: &self.gw, internet: &self.inet }
    }

    fn build_world(&self) {
        self.world().build(self.uplinks).unwrap_or_else(|e| panic!("building the world: {e:#}"));
    }

    /// A "cloud" behind gw (as the seed's cloud1/cloud2): netns `tc<id>x<k>` at `wan_ip`/24
    /// (gw at .254 of it), with CLOUD_LAN_IP on its lo, where its HTTP server (serving
    /// `files`, name -> content) and whatever the test starts listen. Returns the netns.
    pub fn add_cloud(&mut self, k: u32, wan_ip: &str, files: &[(&str, &[u8])]) -> String {
        let ns = format!("tc{}x{k}", self.id);
        // Ours to delete from here on, whatever fails next.
        self.extra_ns.push(ns.clone());
        netns_world::add_netns(&ns).unwrap_or_else(|e| panic!("{e:#}"));
        self.world().add_cloud(&ns, &format!("cl{k}"), wan_ip).unwrap_or_else(|e| panic!("cloud {ns}: {e:#}"));
        let www = self.scratch_dir(&format!("www{k}"));
        for (name, content) in files {
            std::fs::write(www.join(name), content).unwrap();
        }
        self.spawn(&ns, &["python3", "-m", "http.server", "80", "--bind", CLOUD_LAN_IP, "--directory", www.to_str().unwrap()]);
        self.wait_listening(&ns, CLOUD_LAN_IP, 80);
        ns
    }

    /// The names under the agent's pin directory (none when it is gone).
    pub fn pins(&self) -> Vec<String> {
        std::fs::read_dir(&self.pin_dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// A directory of this scenario's own under the temp dir (made, and empty when new),
    /// removed with the scenario, whatever fails.
    pub fn scratch_dir(&mut self, name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("netns-agent-test-{}-{name}", self.id));
        self.extra_dirs.push(dir.clone());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    }

    /// A strongSwan responder in `ns` (a cloud): IKEv2 with PSK `psk` from anyone, tunnel
    /// `local_ts` === `remote_ts`, on the backend the test runs with (VPN_BACKEND). Runs
    /// in its own /run (bind-mounted in the private mount namespace of `ip netns exec`).
    pub fn strongswan_responder(&mut self, ns: &str, local_addr: &str, psk: &str, local_ts: &str, remote_ts: &str) {
        let dir = std::env::temp_dir().join(format!("netns-agent-test-{}-swan-{ns}", self.id));
        self.extra_dirs.push(dir.clone());
        let backend = vpn_backend();
        let responder = netns_world::Responder { ns, dir: &dir, local_addr, psk, local_ts, remote_ts, backend: &backend };
        responder.start(&mut self.children, scaled(Duration::from_secs(20))).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// `netns-agent status --json`, parsed.
    pub fn status(&self) -> StatusReport {
        let out = self.agent_cmd(&["status", "--json", "--config", self.config_path.to_str().unwrap()]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status --json is a StatusReport")
    }

    /// The status of network `ni` (a real name), if it is on record.
    pub fn network_status(&self, ni: &str) -> Option<NetworkStatus> {
        self.status().networks.into_iter().find(|n| n.name == ni)
    }

    /// Waits until a TCP server listens on ip:port in `ns`.
    fn wait_listening(&self, ns: &str, ip: &str, port: u16) {
        netns_world::wait_listening(ns, ip, port, netns_world::Proto::Tcp, scaled(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Starts a server that answers each TCP connection with the peer's "ip:port".
    pub fn whoami_server(&mut self, ns: &str, ip: &str, port: u16) {
        self.spawn(ns, &["python3", "-c", WHOAMI_SERVER, ip, &port.to_string()]);
        self.wait_listening(ns, ip, port);
    }

    /// What a whoami server at ip:port says the connection came from; None if no answer.
    pub fn whoami(&self, ns: &str, ip: &str, port: u16) -> Option<String> {
        let out = self.python(ns, WHOAMI_CLIENT, &[ip, &port.to_string()]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Asks `server`:53 (UDP) from `ns` for the A records of `name`; None on no answer.
    pub fn dns_a(&self, ns: &str, server: &str, name: &str) -> Option<Vec<String>> {
        let out = self.python(ns, DNS_QUERY, &[server, name]);
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect())
    }

    /// Adds a key to the config's [agent] table (before the agent starts).
    pub fn set_agent_key(&self, line: &str) {
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        std::fs::write(&self.config_path, config.replacen("[agent]\n", &format!("[agent]\n{line}\n"), 1)).unwrap();
    }

    /// Replaces placeholders with this scenario's names (longest first: @ni10 before @ni1).
    pub fn expand(&self, text: &str) -> String {
        let mut pairs: Vec<&(String, String)> = self.nis.iter().chain(self.apps.iter()).collect();
        pairs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let mut out = text.to_string();
        for (placeholder, name) in pairs {
            out = out.replace(&format!("@{placeholder}"), name);
        }
        out
    }

    pub fn ni(&self, placeholder: &str) -> &str {
        &self.nis.iter().find(|(p, _)| p == placeholder).expect("unknown NI placeholder").1
    }

    pub fn app(&self, placeholder: &str) -> &str {
        &self.apps.iter().find(|(p, _)| p == placeholder).expect("unknown app placeholder").1
    }

    /// `netns-agent ARGS` inside the zedbox netns.
    pub fn agent_cmd(&self, args: &[&str]) -> Output {
        self.agent_command(args).output().expect("running netns-agent")
    }

    /// `netns-agent ARGS` in zedbox, to run.
    fn agent_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.zedbox)).arg(agent_bin()).args(args);
        cmd
    }

    /// Starts `netns-agent run` in zedbox and waits until it has applied the config.
    pub fn start_agent(&mut self) {
        let config = self.config_path.display().to_string();
        self.start_agent_with(&["--config", &config]);
    }

    /// Starts `netns-agent run ARGS` (the config's source) in zedbox and waits until it
    /// has applied it.
    pub fn start_agent_with(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.log_path()).expect("agent log");
        let child =
            self.agent_command(&["run"]).args(args).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("starting the agent");
        let pid = child.id();
        self.agent = Some(child);
        let limit = scaled(Duration::from_secs(30));
        let deadline = Instant::now() + limit;
        // Applied: the record names this agent and counts its first apply.
        let applied = || {
            let record = AppliedState::try_read(&self.state_dir).ok().flatten();
            record.is_some_and(|r| r.agent_pid == pid && r.applies >= 1)
        };
        while !applied() {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited ({status}) before applying:\n{}", self.agent_log());
            }
            assert!(Instant::now() < deadline, "agent did not apply within {limit:?}:\n{}", self.agent_log());
            sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGTERM; returns its exit status.
    pub fn stop_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut agent = self.agent.take()?;
        let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).stderr(Stdio::null()).status();
        agent.wait().ok()
    }

    /// The NIs' (placeholder, netns name) pairs.
    pub fn ni_names(&self) -> &[(String, String)] {
        &self.nis
    }

    /// The apps' (placeholder, netns name) pairs.
    pub fn app_names(&self) -> &[(String, String)] {
        &self.apps
    }

    /// Kills the agent with SIGKILL (no cleanup of any kind); returns its exit status.
    pub fn kill_agent(&mut self) -> Option<std::process::ExitStatus> {
        let mut agent = self.agent.take()?;
        agent.kill().ok();
        agent.wait().ok()
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(|a| a.id())
    }

    /// Writes `template` (placeholders expanded, the [agent] header kept) as the config
    /// and hands it to the running agent with `netns-agent apply`.
    pub fn apply(&self, template: &str) -> Output {
        self.write_config(template);
        self.agent_cmd(&["apply", "--config", self.config_path.to_str().unwrap()])
    }

    /// Replaces the config file (placeholders expanded, the [agent] header kept).
    pub fn write_config(&self, template: &str) {
        // Four lines whatever `fast_path` is: the config tests name lines of the template.
        let fast_path = self.fast_path.map(|on| format!("fast_path = {on}")).unwrap_or_default();
        let config = format!(
            "[agent]\npin_dir = \"{}\"\nstate_dir = \"{}\"\n{fast_path}\n{}",
            self.pin_dir.display(),
            self.state_dir.display(),
            self.expand(template)
        );
        std::fs::write(&self.config_path, config).expect("writing config");
    }

    fn log_path(&self) -> PathBuf {
        std::env::temp_dir().join(format!("netns-agent-test-{}.log", self.id))
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs a command inside `ns` (a real name, not a placeholder).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec")
    }

    pub fn python(&self, ns: &str, code: &str, args: &[&str]) -> Output {
        let mut full = vec!["python3", "-c", code];
        full.extend_from_slice(args);
        self.exec(ns, &full)
    }

    /// Starts a long-running helper in `ns`; killed and reaped at the end of the test.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) {
        let child = netns_world::spawn_in(ns, args).unwrap_or_else(|e| panic!("spawning a helper: {e:#}"));
        self.children.push(child);
    }

    /// Starts a command in `ns` whose output the test reads when it ends (`finish`); it is
    /// killed and reaped if the test ends first.
    pub fn background(&self, ns: &str, args: &[&str]) -> Background {
        Background::start(ns, args)
    }

    /// A TCP session from `ns` to the internet host's `port` in which the server sends
    /// first (push_session.py): a line now, the second when the test says
    /// (`PushSession::assert_survived`), after what the test does in between: it comes
    /// *in*, as a flow whose entries went would lose it.
    pub fn push_session(&self, ns: &str, port: u16) -> PushSession {
        let script = py_script("push_session.py");
        let go = std::env::temp_dir().join(format!("netns-agent-test-{}-push-{port}", self.id));
        let _ = std::fs::remove_file(&go);
        let p = port.to_string();
        let mut server = self.background(&self.inet, &["python3", "-u", &script, "server", INET_IP, &p, "2", go.to_str().unwrap()]);
        assert_eq!(server.read_line().trim(), "ready", "the push server did not start");
        // Each read waits for the test's go in between (a wait, not a timed check).
        let timeout = scaled(Duration::from_secs(120)).as_secs().to_string();
        let client = self.background(ns, &["python3", "-u", &script, "client", INET_IP, &p, "2", &timeout]);
        PushSession { server, client, go }
    }

    /// One TCP connection from `ns` to an echo server at ip:port (echo_session.py), a
    /// line every `interval` seconds, each read back, until `EchoSession::stop`.
    pub fn echo_session(&self, ns: &str, ip: &str, port: u16, interval: &str) -> EchoSession {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let stop = std::env::temp_dir().join(format!("netns-agent-test-{}-echo-{n}", self.id));
        let _ = std::fs::remove_file(&stop);
        let secs = scaled(Duration::from_secs(60)).as_secs().to_string();
        let script = py_script("echo_session.py");
        let session = self.background(ns, &["python3", &script, ip, &port.to_string(), &secs, interval, stop.to_str().unwrap()]);
        EchoSession { session, stop }
    }

    /// Starts the echo server of `ECHO_SERVER` on ip:port in `ns` and waits until it listens.
    pub fn echo_server(&mut self, ns: &str, ip: &str, port: u16) {
        self.spawn(ns, &["python3", "-c", ECHO_SERVER, ip, &port.to_string()]);
        self.wait_listening(ns, ip, port);
    }

    /// Connects from `ns` to ip:port, sends `bytes` bytes and reads them back.
    /// `bind_dev` binds the socket to an interface (for zedbox -> NI via vethN).
    pub fn echo(&self, ns: &str, ip: &str, port: u16, bytes: usize, bind_dev: Option<&str>) -> EchoResult {
        let out = self.python(ns, ECHO_CLIENT, &[ip, &port.to_string(), &bytes.to_string(), bind_dev.unwrap_or("")]);
        match out.status.code() {
            Some(0) => EchoResult::Echoed(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()),
            Some(2) => EchoResult::TimedOut,
            Some(3) => EchoResult::Refused,
            _ => EchoResult::Failed(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    }

    /// `netns-agent flows --json`, parsed.
    pub fn flows_report(&self) -> FlowsReport {
        self.try_flows_report().unwrap_or_else(|e| panic!("{e}"))
    }

    /// `flows_report`, its failure as a message (for code that must not panic).
    fn try_flows_report(&self) -> Result<FlowsReport, String> {
        let config = self.config_path.to_str().ok_or("the config's path is not UTF-8")?;
        let out = self.agent_command(&["flows", "--json", "--config", config]).output().map_err(|e| format!("running netns-agent: {e}"))?;
        if !out.status.success() {
            return Err(format!("flows failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("flows --json is not a FlowsReport: {e}"))
    }

    pub fn flows(&self) -> Vec<FlowRecord> {
        self.flows_report().flows
    }

    pub fn counter(&self, name: &str) -> u64 {
        *self.flows_report().counters.get(name).unwrap_or_else(|| panic!("no counter {name}"))
    }

    /// The agent's `/metrics` (its `[agent] metrics` at 127.0.0.1:9464), as Prometheus
    /// text; read `metric` from it.
    pub fn scrape_metrics(&self) -> String {
        let out = self.exec(&self.zedbox, &["curl", "-sf", "http://127.0.0.1:9464/metrics"]);
        assert!(out.status.success(), "scrape failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Makes `ns`'s neighbour entry of `ip` permanent (as it is now): no ARP in a window
    /// whose packets a test counts, however slow the machine.
    pub fn pin_neighbour(&self, ns: &str, ip: &str) {
        let out = String::from_utf8(self.exec(ns, &["ip", "neigh", "show", "to", ip]).stdout).unwrap();
        let (Some(dev), Some(mac)) = (word_after(&out, "dev"), word_after(&out, "lladdr")) else {
            panic!("no neighbour entry of {ip} in {ns}: {out}")
        };
        assert!(self.exec(ns, &["ip", "neigh", "replace", ip, "lladdr", mac, "dev", dev, "nud", "permanent"]).status.success());
    }

    /// The MAC `ns`'s neighbour entry of `ip` holds; None without one.
    pub fn neighbour_mac(&self, ns: &str, ip: &str) -> Option<String> {
        let out = String::from_utf8(self.exec(ns, &["ip", "neigh", "show", "to", ip]).stdout).unwrap();
        word_after(&out, "lladdr").map(String::from)
    }

    /// The MAC of link `dev` in `ns`.
    pub fn link_mac(&self, ns: &str, dev: &str) -> String {
        let out = String::from_utf8(self.exec(ns, &["ip", "-o", "link", "show", dev]).stdout).unwrap();
        word_after(&out, "link/ether").unwrap_or_else(|| panic!("no MAC of {dev} in {ns}: {out}")).to_string()
    }

    /// `netns-agent dns-log --json`, parsed.
    pub fn dns_log(&self) -> Vec<DnsLogEntry> {
        let out = self.agent_cmd(&["dns-log", "--json", "--config", self.config_path.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).expect("dns-log --json is a list of DnsLogEntry")
    }

    /// `netns-agent down` for this scenario's config.
    pub fn down(&self) -> Output {
        self.agent_cmd(&["down", "--config", self.config_path.to_str().unwrap()])
    }

    /// Every trace this scenario's agent may leave: netns, links, pins, state.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for (_, ni) in &self.nis {
            if Path::new("/run/netns").join(ni).exists() {
                left.push(format!("netns {ni}"));
            }
        }
        let links = |ns: &str| String::from_utf8_lossy(&self.exec(ns, &["ip", "-o", "link"]).stdout).into_owned();
        for l in links(&self.zedbox).lines().filter(|l| l.contains(": veth")) {
            left.push(format!("zedbox link {l}"));
        }
        for (_, app) in &self.apps {
            for l in links(app).lines().filter(|l| l.contains(": nbu")) {
                left.push(format!("{app} link {l}"));
            }
        }
        // The uplinks keep no qdisc of ours (the agent's filters sat on clsact).
        let qdiscs = String::from_utf8_lossy(&self.exec(&self.zedbox, &["tc", "qdisc", "show"]).stdout).into_owned();
        for q in qdiscs.lines().filter(|q| q.contains("clsact")) {
            left.push(format!("zedbox qdisc {q}"));
        }
        if self.pin_dir.exists() {
            left.push(format!("pins {}", self.pin_dir.display()));
        }
        if self.state_dir.join("state.json").exists() {
            left.push("state.json".into());
        }
        let rules = String::from_utf8_lossy(&self.exec(&self.zedbox, &["ip", "rule"]).stdout).into_owned();
        for r in rules.lines().filter(|r| !r.starts_with("0:") && !r.starts_with("32766:") && !r.starts_with("32767:")) {
            left.push(format!("zedbox rule {r}"));
        }
        left
    }

    /// For a failed test, before cleanup: the data path's non-zero counters (where its
    /// packets went) and the end of the agent's log. Nothing here may panic again (a
    /// panic while panicking aborts the test binary, skipping the cleanup).
    fn print_failure_state(&self) {
        match self.try_flows_report() {
            Ok(report) => {
                let counters: Vec<String> = report.counters.iter().filter(|(_, v)| **v != 0).map(|(k, v)| format!("{k} {v}")).collect();
                eprintln!("failed test {}: the data path's counters: {}", self.id, counters.join(", "));
            }
            Err(e) => eprintln!("failed test {}: no counters ({e})", self.id),
        }
        let log = self.agent_log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("failed test {}: the agent log's last {} lines:\n{}", self.id, tail.len(), tail.join("\n"));
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_failure_state();
        }
        for mut c in self.children.drain(..) {
            c.kill().ok();
            c.wait().ok();
        }
        self.stop_agent();
        let down = self.down();
        if !down.status.success() {
            eprintln!("cleanup: down failed: {}", String::from_utf8_lossy(&down.stderr));
        }
        // Belt and braces for a failed `down`: nothing of this scenario may outlive it.
        if self.uplinks > 0 {
            for ns in [&self.gw, &self.inet] {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        for (_, ni) in &self.nis {
            let _ = Command::new("ip").args(["netns", "del", ni]).stderr(Stdio::null()).status();
        }
        for ns in std::iter::once(&self.zedbox).chain(self.apps.iter().map(|a| &a.1)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for ns in &self.extra_ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for dir in &self.extra_dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(self.log_path());
    }
}

/// A command running beside the test (see `Scenario::background`).
pub struct Background(Option<Child>, Option<std::io::BufReader<std::process::ChildStdout>>);

impl Background {
    /// Starts `args` in `ns`, its stdin, stdout and stderr piped.
    pub fn start(ns: &str, args: &[&str]) -> Background {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        Background(Some(child), None)
    }

    /// Starts a script that prints "ready" once set up (and may wait for `go`), and
    /// waits for that line.
    pub fn ready(ns: &str, args: &[&str]) -> Background {
        let mut script = Background::start(ns, args);
        let line = script.read_line();
        assert_eq!(line.trim(), "ready", "{args:?} says it is ready");
        script
    }

    /// Starts tcpdump (`tcpdump`: its command line; `timeout ...` in front is fine) in
    /// `ns`, its stderr with its stdout, and waits until it listens.
    pub fn tcpdump(ns: &str, tcpdump: &str) -> Background {
        let cmd = format!("exec {tcpdump} 2>&1");
        let mut capture = Background::start(ns, &["sh", "-c", &cmd]);
        // (After a line that says the verbose output is suppressed.)
        let started = (0..3).map(|_| capture.read_line()).find(|l| l.contains("listening on") || l.is_empty());
        assert!(started.is_some_and(|l| !l.is_empty()), "{tcpdump} in {ns} did not start");
        capture
    }

    /// Tells it to go on: a line on its stdin (one that ended already does not hear it).
    pub fn go(&mut self) {
        let child = self.0.as_mut().expect("running");
        let _ = std::io::Write::write_all(child.stdin.as_mut().expect("piped stdin"), b"go\n");
    }

    /// The next line of the command's output (waits for it; empty at its end).
    pub fn read_line(&mut self) -> String {
        use std::io::BufRead as _;
        if self.1.is_none() {
            let out = self.0.as_mut().unwrap().stdout.take().expect("piped stdout");
            self.1 = Some(std::io::BufReader::new(out));
        }
        let mut line = String::new();
        self.1.as_mut().unwrap().read_line(&mut line).ok();
        line
    }

    /// The command's process id.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Whether the command still runs.
    pub fn running(&mut self) -> bool {
        self.0.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Closes its stdin and waits for the command to end; its output (after the lines
    /// already read).
    pub fn finish(mut self) -> Output {
        use std::io::Read as _;
        let mut child = self.0.take().unwrap();
        drop(child.stdin.take());
        let mut rest = Vec::new();
        if let Some(mut r) = self.1.take() {
            r.read_to_end(&mut rest).ok();
        }
        let mut out = child.wait_with_output().expect("waiting for a background command");
        rest.extend_from_slice(&out.stdout);
        out.stdout = rest;
        out
    }
}

/// A session of lines echoed back (see `Scenario::echo_session`).
pub struct EchoSession {
    session: Background,
    stop: PathBuf,
}

impl EchoSession {
    /// Ends the session: what it reports (lines `sent`, `echoed`, and the `error` that
    /// ended it early, if one did; Null if it printed nothing).
    pub fn stop(self) -> serde_json::Value {
        std::fs::write(&self.stop, b"").unwrap();
        let out = self.session.finish();
        let _ = std::fs::remove_file(&self.stop);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }
}

/// A session the internet host's server speaks in (see `Scenario::push_session`).
pub struct PushSession {
    server: Background,
    client: Background,
    go: PathBuf,
}

impl PushSession {
    /// Has the server send its second line; the client must get both, no error.
    pub fn assert_survived(self, what: &str) {
        std::fs::write(&self.go, b"").unwrap();
        let out = self.client.finish();
        let _ = std::fs::remove_file(&self.go);
        drop(self.server);
        let result: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("session output: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        println!("{what}: {result}");
        assert_eq!(result["received"], 2, "{what}: the server's second line arrived: {result}");
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// The uplink that the world builds for a switch NI; the address every cloud serves on.
pub use netns_world::{CLOUD_LAN_IP, SWITCH_UPLINK};

/// The "internet" host of a scenario with uplinks.
pub const INET_IP: &str = netns_world::INTERNET_IP;

/// In `ip`'s output: the word after `name` ("lladdr" -> the MAC).
fn word_after<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut words = text.split_whitespace();
    words.by_ref().find(|w| *w == name)?;
    words.next()
}

/// `d` stretched by NETNS_TEST_TIME_SCALE (default 1): the VM run emulates every
/// instruction (TCG), so its waits need to be longer; never a shortcut for a flaky wait.
pub fn scaled(d: Duration) -> Duration {
    let scale: u32 = std::env::var("NETNS_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    d * scale.max(1)
}

/// How many packets or connections a load test sends: `n` here, a tenth of it per unit of
/// NETNS_TEST_TIME_SCALE in the emulated VM (where Python runs ~50x slower); what it
/// checks stays the same, at the smaller size.
pub fn load_size(n: u64) -> u64 {
    let scale: u64 = std::env::var("NETNS_TEST_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    if scale > 1 {
        (n / (10 * scale)).max(10)
    } else {
        n
    }
}

/// The data path's fast path counters, one per hop (README: "The data-path counters").
pub fn fast_path_counters() -> [&'static str; 8] {
    netns_ebpf_common::Stat::FAST_HOPS.map(netns_ebpf_common::Stat::name)
}

/// The value of metric `name` with every one of `labels` in Prometheus text `text` (0
/// when absent).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(samples.len() <= 1, "{name} {labels:?} is not one sample: {samples:?}");
    samples.first().copied().unwrap_or(0.0)
}

/// NETNS_TEST_FAST_PATH: "on" or "off" sets `[agent] fast_path` in every test's config
/// (`cargo xtask test` runs the VM stage with it off, the host's with the default).
pub fn fast_path_from_env() -> Option<bool> {
    match std::env::var("NETNS_TEST_FAST_PATH").ok()?.as_str() {
        "on" => Some(true),
        "off" => Some(false),
        other => panic!("NETNS_TEST_FAST_PATH={other}: \"on\" or \"off\""),
    }
}

/// The IPsec backend of VPN tests: libipsec (this kernel has no ESP) unless
/// NETNS_TEST_VPN_BACKEND says "kernel" (the VM run under Debian's kernel).
pub fn vpn_backend() -> String {
    std::env::var("NETNS_TEST_VPN_BACKEND").unwrap_or_else(|_| "libipsec".into())
}

// The helpers below are files of `tests/py/` too, embedded with `include_str!` rather than
// found by path (`py_script`): they run as `python3 -c <program>` exactly as they did as
// Rust strings, and the test binaries that use them stay self-contained.

/// Answers each connection with the peer's "ip:port" and closes it.
pub const WHOAMI_SERVER: &str = include_str!("../py/whoami_server.py");

/// Connects to a whoami server and prints what it says (`Scenario::whoami`).
const WHOAMI_CLIENT: &str = include_str!("../py/whoami_client.py");

/// A DNS A query over UDP; prints the answer addresses (nothing for NXDOMAIN/empty),
/// exits 1 on timeout or a non-answer.
pub const DNS_QUERY: &str = include_str!("../py/dns_query.py");

/// Answers each UDP datagram with the sender's "ip:port". Tests send it thousands of
/// datagrams at once: a 4 MiB receive buffer (SO_RCVBUFFORCE = 33, as root, past
/// rmem_max) keeps it from dropping any (UdpRcvbufErrors) before it reads them.
pub const UDP_WHOAMI_SERVER: &str = include_str!("../py/udp_whoami_server.py");

/// The datagrams that arrive at ip:port in a netns (`py/count_udp.py`), counted from
/// `start` (bound when it returns) until the test's sender is done (`count`): no fixed
/// window that a sender slow to start (Python in the emulated VM) could miss.
pub struct UdpCounter(Background);

impl UdpCounter {
    pub fn start(ns: &str, ip: &str, port: u16) -> UdpCounter {
        let grace = scaled(Duration::from_secs(1)).as_secs().to_string();
        UdpCounter(Background::ready(ns, &["python3", "-c", include_str!("../py/count_udp.py"), ip, &port.to_string(), &grace]))
    }

    /// How many arrived, the sender being done (those still in flight get a scaled
    /// second more).
    pub fn count(self) -> u64 {
        let out = self.0.finish();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("count_udp.py printed {text:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum EchoResult {
    /// The number of bytes that came back identical.
    Echoed(usize),
    TimedOut,
    Refused,
    Failed(String),
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// Polls `f` every 100 ms until it holds (`Some`) or `timeout` passes (`None`).
pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> Option<()> {
    netns_world::wait_until(timeout, f).then_some(())
}

/// Echo server: for each connection, sends back everything it receives until EOF.
pub const ECHO_SERVER: &str = include_str!("../py/echo_server.py");

/// Echo client: exit 0 and prints the byte count when the data came back identical,
/// 2 on connect timeout, 3 when refused, 1 otherwise.
pub const ECHO_CLIENT: &str = include_str!("../py/echo_client.py");
