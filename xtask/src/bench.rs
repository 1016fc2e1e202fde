//! `cargo xtask bench`: app1 -> internet host through the eBPF data path (ACL, conntrack
//! at the app port, source NAT at the NI veth and at the uplink), then through the very
//! same namespaces and veths with the programs detached: once with plain routes and no
//! rules at all, once the way EVE does it today (iptables: the same ACL as FORWARD rules,
//! conntrack, MASQUERADE twice). The paths with an ACL run with 10, 1,000 and 10,000
//! ACEs (the last allows). Each path gets TCP throughput (iperf3) and the rate of new TCP
//! connections (wrk against nginx, a connection per request; the ACL judges each
//! connection once), each round right next to the same round on the bare twin (`load`):
//! every figure is printed with its ratio to the twin. The eBPF path runs with the fast
//! path and without it, and with the flow log (every connection is a start and an end
//! record), with the agent's CPU time while it follows the new connections.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    demo::{build_world, output, sh, step, stop_agent, ALLOWED_SITE, APPS, GW, INTERNET, STATE_DIR, ZEDBOX},
    load::{self, Ends, BENCH, TWIN},
};

/// Deletes every clsact qdisc in netns `ns` (with the agent's filters on them) and checks
/// that no program is left on any interface there.
fn detach_all(ns: &str) -> Result<()> {
    let qdiscs = output(&["tc", "-n", ns, "-j", "qdisc", "show"]);
    let qdiscs: serde_json::Value = serde_json::from_str(&qdiscs).with_context(|| format!("tc qdisc show in {ns}: {qdiscs}"))?;
    for q in qdiscs.as_array().into_iter().flatten().filter(|q| q["kind"] == "clsact") {
        let dev = q["dev"].as_str().context("a qdisc without its device")?;
        sh(&["tc", "-n", ns, "qdisc", "del", "dev", dev, "clsact"])?;
    }
    let left = output(&["ip", "netns", "exec", ns, "bpftool", "net", "show"]);
    if left.contains("app_port_") || left.contains("nat_") {
        bail!("programs are still attached in {ns}:\n{left}");
    }
    Ok(())
}

/// Routes that carry the bench's path without translation (the agent's NAT is gone).
const BARE_ROUTES: [(&str, &[&str]); 2] =
    [(ZEDBOX, &["10.10.1.0/24", "via", "169.254.100.2", "dev", "veth1"]), (GW, &["10.10.1.0/24", "via", "192.168.0.2"])];

/// The bench's path with the agent stopped (its tc filters stay): every program taken
/// off by deleting the clsact qdiscs that hold them, and the same path routed without
/// translation (`BARE_ROUTES`).
fn without_programs() -> Result<()> {
    for ns in ["ni1", ZEDBOX] {
        detach_all(ns)?;
    }
    for (ns, route) in BARE_ROUTES {
        sh(&[&["ip", "-n", ns, "route", "add"], route].concat())?;
    }
    Ok(())
}

/// One NI on eth0; app1's ACL has `aces` ACEs and only its last allows the bench's
/// traffic: the ACL's worst case, on both paths that have one.
fn bench_config(aces: u32) -> String {
    bench_config_with(aces, FILLER_PORT)
}

/// The same, the drop ACEs on ports from `filler_port` + 1 (the apply times' changes).
fn bench_config_with(aces: u32, filler_port: u32) -> String {
    bench_config_on(aces, filler_port, |_| format!("{ALLOWED_SITE}/32"))
}

/// The same, drop ACE `i` for address `ip(i)`.
fn bench_config_on(aces: u32, filler_port: u32, ip: impl Fn(u32) -> String) -> String {
    let fillers = aces - 1;
    let mut aces: Vec<String> = (1..=fillers)
        .map(|i| {
            format!(
                "  {{ id = {i}, match = {{ ip = \"{}\", protocol = \"tcp\", fport = {} }}, action = \"drop\" }},",
                ip(i),
                filler_port + i
            )
        })
        .collect();
    aces.push(format!("  {{ id = {}, match = {{ ip = \"0.0.0.0/0\" }} }},", fillers + 1));
    format!(
        "# cargo xtask bench: one NI on eth0, app1 may go anywhere (after {fillers} drop ACEs).\n\
         [[uplink]]\nname = \"eth0\"\n\n\
         [[network]]\nname = \"ni1\"\nkind = \"local\"\nsubnet = \"10.10.1.0/24\"\ngateway = \"10.10.1.1\"\nuplink = \"eth0\"\n\n\
         [[app]]\nname = \"app1\"\nnetns = \"app1\"\n[[app.interface]]\nnetwork = \"ni1\"\nip = \"10.10.1.2\"\nacl = [\n{}\n]\n",
        aces.join("\n")
    )
}

/// The same ACL and translations the iptables way (EVE's chains also mark and log; these
/// are the minimum): rules in the NI's FORWARD chain after the established-flow shortcut,
/// MASQUERADE in the NI and on the uplink.
fn iptables_rules(aces: u32) -> (String, String) {
    let mut ni = String::from("*filter\n:FORWARD DROP [0:0]\n-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    for i in 1..aces {
        ni += &format!("-A FORWARD -s 10.10.1.2 -d {ALLOWED_SITE}/32 -p tcp --dport {} -j DROP\n", FILLER_PORT + i);
    }
    ni += "-A FORWARD -s 10.10.1.2 -j ACCEPT\nCOMMIT\n*nat\n-A POSTROUTING -s 10.10.1.0/24 ! -d 10.10.1.0/24 -j MASQUERADE\nCOMMIT\n";
    let zedbox = "*nat\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n".to_string();
    (ni, zedbox)
}

/// ACL sizes the paths with an ACL run at (ACEs; all but the last drop, on ports nobody
/// uses, above the bench's own).
const ACL_SIZES: [u32; 3] = [10, 1000, 10_000];
const FILLER_PORT: u32 = 20_000;
const SECONDS: u32 = 5;
const ROUNDS: usize = 3;
/// The whole bench's wrk rounds per path: more than its iperf3 rounds, as single
/// rounds of new connections range about ten percent either way on this machine.
const WRK_ROUNDS: usize = 5;
/// `--connections-only`'s rounds.
const CONNECTION_ROUNDS: usize = 12;

/// What `cargo xtask bench` runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Part {
    All,
    ScaleOnly,
    ApplyOnly,
    Profile,
    /// With an ACL of this many ACEs.
    ConnectionsOnly {
        aces: u32,
    },
}

pub fn run(agent_bin: &Path, part: Part) -> Result<()> {
    let dir = std::env::temp_dir().join("netns-agent-bench");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.toml");
    std::fs::write(&config, bench_config(ACL_SIZES[0]))?;
    for ns in [ZEDBOX, GW, INTERNET].iter().chain(APPS.iter()).chain(["ni1"].iter()).chain(load::TWIN_NAMESPACES.iter()) {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("netns {ns} already exists (a demo or a bench still up?)");
        }
    }
    let mut cleanup = Cleanup { agent_bin: agent_bin.to_path_buf(), config: config.clone(), servers: Vec::new() };
    step("world and agent");
    build_world()?;
    let _ = std::fs::remove_file(AGENT_LOG);
    if part == Part::ScaleOnly {
        return crate::scale::run(agent_bin, &dir);
    }
    step("the bare twin (the same path again: plain routes, no programs, no NAT) and nginx on both internet hosts");
    load::build_twin()?;
    for ends in [BENCH, TWIN] {
        cleanup.servers.push(load::start_nginx(ends, &dir)?);
    }
    let agent = start_agent(agent_bin, &config).context("the bench config")?;

    if part == Part::Profile {
        program_costs(&dir)?;
        profile(&dir, "eBPF path", true)?;
        // The same namespaces with nothing of ours running: what the path costs beside
        // the twin before any program runs.
        stop_agent(&mut { agent })?;
        without_programs()?;
        profile(&dir, "no programs", false)?;
        return agent_down(agent_bin, &config);
    }
    if let Part::ConnectionsOnly { aces } = part {
        if aces != ACL_SIZES[0] {
            std::fs::write(&config, bench_config(aces))?;
            apply(agent_bin, &config).context("the bench config with more ACEs")?;
        }
        // What the programs cost per connection with this ACL: the figure a change of
        // the ACL search moves, without the twin's noise.
        program_costs(&dir)?;
        connections_only(&dir, &format!("eBPF path, {aces} ACEs"), Some(agent.id()))?;
        stop_agent(&mut { agent })?;
        without_programs()?;
        connections_only(&dir, "the same namespaces and veths: no programs, no NAT", None)?;
        return agent_down(agent_bin, &config);
    }
    if part == Part::ApplyOnly {
        let mut agent = apply_times(agent_bin, &config, agent)?;
        stop_agent(&mut agent)?;
        return agent_down(agent_bin, &config);
    }
    step("program sizes (bpftool prog show)");
    for (name, p) in our_programs() {
        println!("  {name:<20} {:>5} instructions (xlated), {:>6} bytes jited", p.insns, p.jited_bytes);
    }

    // Each ACL size in turn, applied to the running agent: with the fast path (the
    // default), then the smallest and the largest without it.
    let mut ebpf = Vec::new();
    for aces in ACL_SIZES {
        std::fs::write(&config, bench_config(aces))?;
        apply(agent_bin, &config)?;
        ebpf.push((aces, measure(&format!("eBPF path, {aces} ACEs"), Some(agent.id()), &dir)?));
        if aces == ACL_SIZES[0] {
            program_costs(&dir)?;
        }
    }
    let mut kernel_path = Vec::new();
    for aces in [ACL_SIZES[0], ACL_SIZES[ACL_SIZES.len() - 1]] {
        std::fs::write(&config, format!("[agent]\nfast_path = false\n\n{}", bench_config(aces)))?;
        apply(agent_bin, &config)?;
        kernel_path.push((aces, measure(&format!("eBPF path without the fast path, {aces} ACEs"), Some(agent.id()), &dir)?));
    }
    std::fs::write(&config, bench_config(ACL_SIZES[ACL_SIZES.len() - 1]))?;
    apply(agent_bin, &config)?;
    let agent = apply_times(agent_bin, &config, agent)?;

    // The same with the flow log on: a restart over the applied system with it set.
    stop_agent(&mut { agent })?;
    let flow_log = dir.join("flows.jsonl");
    let _ = std::fs::remove_file(&flow_log);
    let logged_aces = ACL_SIZES[0];
    let with_log = format!("[agent]\nflow_log = {:?}\n\n{}", flow_log.display().to_string(), bench_config(logged_aces));
    std::fs::write(&config, with_log)?;
    let mut agent = start_agent(agent_bin, &config).context("the bench config with the flow log")?;
    let logged = measure(&format!("eBPF path, {logged_aces} ACEs, with the flow log"), Some(agent.id()), &dir)?;
    let log_text = std::fs::read_to_string(&flow_log).unwrap_or_default();
    println!("  flow log: {} records, {} bytes", log_text.lines().count(), log_text.len());

    stop_agent(&mut agent)?;
    without_programs()?;
    let bare = measure("the same namespaces and veths: no programs, no NAT", None, &dir)?;

    // iptables: the routes go again, so that only working MASQUERADE gets the answers back.
    for (ns, route) in BARE_ROUTES {
        sh(&[&["ip", "-n", ns, "route", "del"], route].concat())?;
    }
    let mut ipt = Vec::new();
    for aces in ACL_SIZES {
        let (ni_rules, zedbox_rules) = iptables_rules(aces);
        iptables_restore("ni1", &ni_rules)?;
        iptables_restore(ZEDBOX, &zedbox_rules)?;
        ipt.push((aces, measure(&format!("iptables, {aces} rules"), None, &dir)?));
        let counted = output(&["ip", "netns", "exec", "ni1", "iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x"]);
        if !counted.lines().any(|l| l.contains("MASQUERADE") && l.split_whitespace().next().is_some_and(|p| p != "0")) {
            bail!("the iptables run did not go through MASQUERADE:\n{counted}");
        }
    }

    step("result (median of the rounds [min-max]; in parentheses the median of each round's ratio to the bare twin's round beside it)");
    println!("  {:<56} {:>26} {:>28}", "", "TCP Gbit/s", "new TCP conn/s");
    let mut rows: Vec<(String, &Measured)> = Vec::new();
    for (aces, m) in &ebpf {
        rows.push((format!("eBPF: {aces} ACEs, last allows; conntrack; 2x SNAT"), m));
    }
    for (aces, m) in &kernel_path {
        rows.push((format!("eBPF without the fast path: {aces} ACEs"), m));
    }
    rows.push((format!("eBPF: {logged_aces} ACEs, with the flow log"), &logged));
    for (aces, m) in &ipt {
        rows.push((format!("iptables: {aces} FORWARD rules, last allows; 2x MASQ."), m));
    }
    rows.push(("same namespaces and veths, no programs, no NAT".to_string(), &bare));
    let mut twin = Measured::default();
    for (label, m) in rows {
        println!(
            "  {label:<56} {:>6.2} {:>11} ({:>4.2}) {:>6.0} {:>13} ({:>4.2})",
            median(&m.gbit),
            spread(&m.gbit, 1),
            median_ratio(&m.gbit, &m.twin_gbit),
            median(&m.conn),
            spread(&m.conn, 0),
            median_ratio(&m.conn, &m.twin_conn),
        );
        twin.gbit.extend(&m.twin_gbit);
        twin.conn.extend(&m.twin_conn);
    }
    println!(
        "  {:<56} {:>6.2} {:>11}        {:>6.0} {:>13}",
        format!("the bare twin, all its {} rounds", twin.gbit.len()),
        median(&twin.gbit),
        spread(&twin.gbit, 1),
        median(&twin.conn),
        spread(&twin.conn, 0)
    );
    step("the agent's CPU while it follows new connections (records per connection: a start, an end)");
    for (label, m) in [("without the flow log", &ebpf[0].1), ("with the flow log", &logged)] {
        if let Some(cpu) = m.agent_cpu {
            let rate = median(&m.conn);
            println!("  {label:<22} {:>5.1}% of a core at {rate:.0} new flows/s: {:>5.2} us per new flow", cpu * 100.0, cpu * 1e6 / rate);
        }
    }
    // The bench's NI goes first: the scale run has the uplink to itself.
    agent_down(agent_bin, &config)?;
    crate::scale::run(agent_bin, &dir)
}

/// Changes applied to the running agent (`netns-agent apply`), a restart over the
/// applied system, and what they replace (`down` + `run`): wall time of the command
/// and the agent's own time for the apply (its report). Leaves the agent running with
/// the bench config; returns it.
fn apply_times(agent_bin: &Path, config: &Path, mut agent: std::process::Child) -> Result<std::process::Child> {
    step(&format!("apply times: changes to the running agent ({ROUNDS} rounds each; median wall / agent ms)"));
    let base = bench_config(64);
    let one_ace = base.replacen(&format!("fport = {} }}", FILLER_PORT + 1), &format!("fport = {} }}", FILLER_PORT + 20_001), 1);
    // Every drop ACE on other ports: the whole ACL written beside the live one, swapped.
    let replaced = |aces| (bench_config(aces), bench_config_with(aces, FILLER_PORT + 20_000));
    let app2 = format!("{base}\n[[app]]\nname = \"app2\"\nnetns = \"app2\"\n[[app.interface]]\nnetwork = \"ni1\"\nip = \"10.10.1.3\"\nacl = [{{ id = 1, match = {{ ip = \"0.0.0.0/0\" }} }}]\n");
    let ni2 = format!(
        "{base}\n[[network]]\nname = \"ni2\"\nkind = \"local\"\nsubnet = \"10.20.0.0/24\"\ngateway = \"10.20.0.1\"\nuplink = \"eth0\"\n"
    );
    let apply = |text: &str| -> Result<(f64, f64)> {
        std::fs::write(config, text)?;
        apply(agent_bin, config)
    };
    let mut rows: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    let changes = [
        ("one ACE changed (of 64)", (base.clone(), one_ace)),
        ("one app added", (base.clone(), app2)),
        ("one NI added", (base.clone(), ni2)),
    ];
    let swaps = [64, 1000, 10_000].map(|aces| (format!("{aces} ACEs replaced (ACL swap)"), replaced(aces)));
    // The same largest swap with every drop ACE on an address of its own (two ranges of
    // the address table each, where the rows above share one address).
    let host = |i: u32| format!("10.200.{}.{}/32", i / 250, i % 250 + 1);
    let distinct = (
        format!("{SWAP_ACES} ACEs on as many addresses replaced (ACL swap)"),
        (bench_config_on(SWAP_ACES, FILLER_PORT, host), bench_config_on(SWAP_ACES, FILLER_PORT + 20_000, host)),
    );
    // Where each swap row's lines start and end in the agent's log.
    let mut swap_logs: Vec<(String, std::ops::Range<usize>)> = Vec::new();
    for (label, (from, changed)) in changes.into_iter().map(|(l, c)| (l.to_string(), c)).chain(swaps).chain([distinct]) {
        apply(&from)?;
        let log_start = agent_log_len();
        let mut times = Vec::new();
        for _ in 0..ROUNDS {
            times.push(apply(&changed)?);
            apply(&from)?;
        }
        if label.contains("(ACL swap)") {
            swap_logs.push((label.clone(), log_start..agent_log_len()));
        }
        rows.push((label, times));
    }
    apply(&base)?;
    // A restart over the applied system: kill -9, run again until applied.
    let start_agent = || -> Result<(std::process::Child, f64)> {
        let started = Instant::now();
        let agent = start_agent(agent_bin, config)?;
        Ok((agent, started.elapsed().as_secs_f64() * 1000.0))
    };
    let own_last = || last_apply(Path::new(STATE_DIR)).0;
    let mut restarts = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..ROUNDS {
        agent.kill()?;
        agent.wait()?;
        let (a, wall) = start_agent()?;
        agent = a;
        restarts.push((wall, own_last()));
        // What a restart or a change replaces: down, then run from nothing.
        stop_agent(&mut agent)?;
        let started = Instant::now();
        agent_down(agent_bin, config)?;
        let (a, _) = start_agent()?;
        agent = a;
        fresh.push((started.elapsed().as_secs_f64() * 1000.0, own_last()));
    }
    rows.push(("restart over the applied system (kill -9, run)".into(), restarts));
    rows.push(("down + run from nothing (what the above replace)".into(), fresh));
    println!("  {:<50} {:>12} {:>12}", "", "wall ms", "agent ms");
    for (label, times) in &rows {
        let wall: Vec<f64> = times.iter().map(|t| t.0).collect();
        let own: Vec<f64> = times.iter().map(|t| t.1).collect();
        println!("  {label:<50} {:>12.1} {:>12.1}", median(&wall), median(&own));
    }
    println!("  the swap itself, as the agent logs it (median [min-max] ms): written beside and switched; then the old one removed too");
    let log = agent_log();
    for (label, lines) in swap_logs {
        let range = |ms: &[f64]| {
            let (lo, hi) = (ms.iter().copied().fold(f64::INFINITY, f64::min), ms.iter().copied().fold(0.0, f64::max));
            format!("{:>8.1} [{lo:.1}-{hi:.1}]", median(ms))
        };
        let lines = &log[lines];
        let (switched, whole) = (logged_swap_ms(lines, "switch_ms"), logged_swap_ms(lines, "ms"));
        println!("    {label:<56}: switched {}, whole {} over {} swaps", range(&switched), range(&whole), whole.len());
    }
    Ok(agent)
}

/// The largest ACL the bench swaps.
const SWAP_ACES: u32 = 10_000;

/// `netns-agent apply --config CONFIG` in zedbox: the wall time of the command and the
/// agent's own time for the apply (ms).
fn apply(agent_bin: &Path, config: &Path) -> Result<(f64, f64)> {
    let started = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ZEDBOX}"))
        .arg(agent_bin)
        .args(["apply", "--config"])
        .arg(config)
        .output()?;
    let wall = started.elapsed().as_secs_f64() * 1000.0;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("apply failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
    }
    let own = stdout.lines().find_map(|l| l.strip_prefix("applied in ")?.strip_suffix(" ms")?.parse().ok()).unwrap_or(f64::NAN);
    Ok((wall, own))
}

/// `netns-agent run --config CONFIG` in zedbox, once it has applied the config.
/// Its log goes to `AGENT_LOG` (appended: the ACL swap times are read from it).
fn start_agent(agent_bin: &Path, config: &Path) -> Result<std::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(AGENT_LOG).context(AGENT_LOG)?;
    start_agent_with(agent_bin, config, Path::new(STATE_DIR), Duration::from_secs(60), Stdio::from(log))
}

const AGENT_LOG: &str = "/tmp/netns-agent-bench/agent.log";

/// The agent's log so far.
fn agent_log() -> String {
    std::fs::read_to_string(AGENT_LOG).unwrap_or_default()
}

/// How long the agent's log is (it only grows: a stretch of it is a byte range).
fn agent_log_len() -> usize {
    std::fs::metadata(AGENT_LOG).map_or(0, |m| m.len() as usize)
}

/// The agent's own ACL swap times (ms) in `log`, from its lines "... ACL of ...
/// swapped" with `switch_ms=X ms=Y`: `which` names the field.
fn logged_swap_ms(log: &str, which: &str) -> Vec<f64> {
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        Some(line[at..].split(|c: char| c.is_whitespace() || c == '\x1b').next()?.to_string())
    };
    log.lines()
        .map(|l| l.replace("\x1b[3m", "").replace("\x1b[0m", "").replace("\x1b[2m", ""))
        .filter(|l| l.contains("swapped"))
        .filter_map(|l| field(&l, which)?.parse().ok())
        .collect()
}

/// The same with the config's state dir, a time limit and where the agent's log goes.
pub fn start_agent_with(agent_bin: &Path, config: &Path, state_dir: &Path, limit: Duration, log: Stdio) -> Result<std::process::Child> {
    let mut agent = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ZEDBOX}"))
        .arg(agent_bin)
        .args(["run", "--config"])
        .arg(config)
        .stderr(log)
        .spawn()
        .context("starting the agent")?;
    crate::wait_applied(state_dir, &mut agent, limit)?;
    Ok(agent)
}

/// `netns-agent down --config CONFIG` in zedbox.
pub fn agent_down(agent_bin: &Path, config: &Path) -> Result<()> {
    sh(&["nsenter", &format!("--net=/run/netns/{ZEDBOX}"), agent_bin.to_str().unwrap(), "down", "--config", config.to_str().unwrap()])
}

/// The last apply on record in `state_dir`: its duration (ms, the agent's own figure) and
/// how many errors it had.
pub fn last_apply(state_dir: &Path) -> (f64, usize) {
    let apply = crate::reports::Record::read(state_dir).and_then(|r| r.last_apply);
    apply.map_or((f64::NAN, 0), |a| (a.duration_ms, a.errors.len()))
}

/// One path's figures per round, and the bare twin's beside them: Gbit/s and
/// connections/s; the agent's CPU (share of one core) over the path's connection rounds,
/// when an agent runs.
#[derive(Default)]
struct Measured {
    gbit: Vec<f64>,
    twin_gbit: Vec<f64>,
    conn: Vec<f64>,
    twin_conn: Vec<f64>,
    agent_cpu: Option<f64>,
}

/// ROUNDS of iperf3 and WRK_ROUNDS of wrk on the bench's path, each round next to one on the twin
/// (which goes first alternates); with `agent`, its CPU time over the path's wrk rounds.
fn measure(path: &str, agent: Option<u32>, dir: &Path) -> Result<Measured> {
    step(&format!(
        "{path}: iperf3 TCP app1 -> {ALLOWED_SITE}, {ROUNDS} x {SECONDS} s; wrk (new connections), {WRK_ROUNDS} x {SECONDS} s; each beside the twin"
    ));
    let mut m = Measured::default();
    for round in 0..ROUNDS {
        let (path, twin) = beside_twin(round, &mut |ends| load::throughput(ends, SECONDS))?;
        m.gbit.push(path);
        m.twin_gbit.push(twin);
    }
    connection_rounds(WRK_ROUNDS, agent, dir, &mut m)?;
    let show = |v: &[f64], d: usize| v.iter().map(|x| format!("{x:.d$}")).collect::<Vec<_>>().join(" ");
    println!(
        "  Gbit/s: {} (twin: {})   connections/s: {} (twin: {})",
        show(&m.gbit, 2),
        show(&m.twin_gbit, 2),
        show(&m.conn, 0),
        show(&m.twin_conn, 0)
    );
    Ok(m)
}

/// One round of `load` on the bench's path and one on the twin, the twin first in odd
/// rounds: (path, twin).
fn beside_twin(round: usize, load: &mut dyn FnMut(Ends) -> Result<f64>) -> Result<(f64, f64)> {
    Ok(if round.is_multiple_of(2) {
        let path = load(BENCH)?;
        (path, load(TWIN)?)
    } else {
        let twin = load(TWIN)?;
        (load(BENCH)?, twin)
    })
}

/// `rounds` wrk rounds on the bench's path, each beside one on the twin, into `m`: the
/// path's rates, the twin's, and with `agent` its CPU share over the path's rounds.
fn connection_rounds(rounds: usize, agent: Option<u32>, dir: &Path, m: &mut Measured) -> Result<()> {
    let mut cpu = (0.0, 0.0);
    for round in 0..rounds {
        let (p, t) = beside_twin(round, &mut |ends| {
            let before = (agent.filter(|_| ends.app == BENCH.app).and_then(cpu_seconds), Instant::now());
            let rate = load::connection_rate(ends, SECONDS, dir)?;
            if let (Some(before_cpu), Some(after)) = (before.0, agent.and_then(cpu_seconds)) {
                cpu = (cpu.0 + after - before_cpu, cpu.1 + before.1.elapsed().as_secs_f64());
            }
            Ok(rate)
        })?;
        m.conn.push(p);
        m.twin_conn.push(t);
    }
    m.agent_cpu = agent.map(|_| cpu.0 / cpu.1);
    Ok(())
}

/// `cargo xtask bench --connections-only`: new connections per second through `path`
/// (the fast path with 10 ACEs, then the same namespaces without programs),
/// `CONNECTION_ROUNDS` wrk rounds each beside the twin, every round's ratio shown:
/// enough rounds to tell a change of about five percent from this machine's noise
/// (seven runs of alike data paths gave medians 0.935-0.983), in a few minutes.
fn connections_only(dir: &Path, path: &str, agent: Option<u32>) -> Result<()> {
    step(&format!("{path}: wrk (new connections), {CONNECTION_ROUNDS} x {SECONDS} s, each beside the twin"));
    let mut m = Measured::default();
    connection_rounds(CONNECTION_ROUNDS, agent, dir, &mut m)?;
    let ratios: Vec<f64> = m.conn.iter().zip(&m.twin_conn).map(|(p, t)| p / t).collect();
    for (round, ((p, t), r)) in m.conn.iter().zip(&m.twin_conn).zip(&ratios).enumerate() {
        println!("  round {:>2}: {p:>6.0} conn/s, twin {t:>6.0}: {r:.3}", round + 1);
    }
    println!(
        "  median ratio {:.3} {}; {} of {} rounds at or above the twin",
        median(&ratios),
        spread(&ratios, 3),
        ratios.iter().filter(|r| **r >= 1.0).count(),
        ratios.len()
    );
    if let Some(cpu) = m.agent_cpu {
        // CPU a connection took from the machine in the agent itself (following its
        // flow's events, sweeping): the programs' figures above leave it out.
        println!("  the agent: {:.1}% of a core, {:.2} us per connection", cpu * 100.0, cpu * 1e6 / median(&m.conn));
    }
    Ok(())
}

/// One of our programs as `bpftool prog show` reports it (one copy serves every NI).
#[derive(Clone, Copy, Default)]
struct ProgramFigures {
    insns: u64,
    jited_bytes: u64,
    /// With kernel.bpf_stats_enabled: runs and nanoseconds run, since it was loaded.
    runs: u64,
    run_ns: u64,
}

/// Our programs (`app_port_*`, `nat_*`) by name.
fn our_programs() -> std::collections::BTreeMap<String, ProgramFigures> {
    let progs: serde_json::Value = serde_json::from_str(&output(&["bpftool", "prog", "show", "--json"])).unwrap_or_default();
    let mut seen = std::collections::BTreeMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or_default();
        if name.starts_with("app_port") || name.starts_with("nat_") {
            let figure = |key: &str| p[key].as_u64().unwrap_or(0);
            let f = ProgramFigures {
                insns: figure("bytes_xlated") / 8,
                jited_bytes: figure("bytes_jited"),
                runs: figure("run_cnt"),
                run_ns: figure("run_time_ns"),
            };
            seen.insert(name.to_string(), f);
        }
    }
    seen
}

/// Where the programs' time goes: one wrk round and one iperf3 round on the path with
/// the kernel's run-time statistics on (kernel.bpf_stats_enabled, off again after: they
/// cost two clock reads per run, so no ratio round runs with them). Per program: runs
/// per connection (per MB) and nanoseconds per run; beside them the CPU time a
/// connection (a MB) took in all, both cores being busy.
fn program_costs(dir: &Path) -> Result<()> {
    step("where the programs' time goes (kernel.bpf_stats_enabled; one wrk and one iperf3 round)");
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(STATS).context("reading kernel.bpf_stats_enabled")?;
    std::fs::write(STATS, "1").context("setting kernel.bpf_stats_enabled")?;
    let rounds = (|| -> Result<_> {
        let before = our_programs();
        let conn_per_s = load::connection_rate(BENCH, SECONDS, dir)?;
        let middle = our_programs();
        let gbit = load::throughput(BENCH, SECONDS)?;
        Ok((before, conn_per_s, middle, gbit, our_programs()))
    })();
    std::fs::write(STATS, was.trim()).context("restoring kernel.bpf_stats_enabled")?;
    let (before, conn_per_s, middle, gbit, after) = rounds?;
    let connections = conn_per_s * SECONDS as f64;
    let megabytes = gbit * 1e3 / 8.0 * SECONDS as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    println!("  {:<20} {:>10} {:>8} {:>9}   {:>8} {:>8} {:>9}", "", "runs/conn", "ns/run", "us/conn", "runs/MB", "ns/run", "us/MB");
    let mut total = (0.0, 0.0);
    for (name, end) in &after {
        let delta = |from: &std::collections::BTreeMap<String, ProgramFigures>, to: &ProgramFigures| {
            let f = from.get(name).copied().unwrap_or_default();
            ((to.runs - f.runs) as f64, (to.run_ns - f.run_ns) as f64)
        };
        let (conn_runs, conn_ns) = delta(&before, &middle[name]);
        let (mb_runs, mb_ns) = delta(&middle, end);
        let per_run = |ns: f64, runs: f64| if runs > 0.0 { ns / runs } else { 0.0 };
        total = (total.0 + conn_ns / connections / 1e3, total.1 + mb_ns / megabytes / 1e3);
        println!(
            "  {name:<20} {:>10.1} {:>8.0} {:>9.2}   {:>8.1} {:>8.0} {:>9.2}",
            conn_runs / connections,
            per_run(conn_ns, conn_runs),
            conn_ns / connections / 1e3,
            mb_runs / megabytes,
            per_run(mb_ns, mb_runs),
            mb_ns / megabytes / 1e3
        );
    }
    println!(
        "  programs in all: {:.2} us per connection, of {:.1} us of CPU per connection ({conn_per_s:.0}/s on {cores} cores); \
         {:.2} us per MB, of {:.1} us ({gbit:.2} Gbit/s)",
        total.0,
        cores * 1e6 / conn_per_s,
        total.1,
        cores * 1e6 / (gbit * 1e3 / 8.0)
    );
    Ok(())
}

/// `perf record -a` over one wrk round and one iperf3 round, each on the bench's path
/// as it stands (`path`: its label, e.g. "eBPF path") and on the bare twin; per load, the
/// symbols (no children) where the two differ most, as CPU microseconds per connection
/// (per MB): what our path adds and what it saves. With `programs`, the samples in our
/// programs by the line of ours they were at.
fn profile(dir: &Path, path: &str, programs: bool) -> Result<()> {
    type Load = fn(Ends, &Path) -> Result<f64>;
    let loads: [(&str, &str, Load); 2] = [
        ("new connections (wrk)", "connection", |ends, dir| load::connection_rate(ends, SECONDS, dir)),
        // Gbit/s -> MB/s.
        ("throughput (iperf3)", "MB", |ends, _| Ok(load::throughput(ends, SECONDS)? * 1e3 / 8.0)),
    ];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // The programs' JIT line info, read while they are loaded, for the profile by line.
    let lines_script = crate::workspace_root().join("xtask/py/program_lines.py");
    let lines = dir.join("program-lines.jsonl");
    if programs {
        let dumped =
            Command::new("python3").arg(&lines_script).args(["dump", "app_port", "nat_"]).output().context("program_lines.py dump")?;
        if !dumped.status.success() {
            bail!("program_lines.py dump: {}", String::from_utf8_lossy(&dumped.stderr));
        }
        std::fs::write(&lines, &dumped.stdout)?;
    }
    for (load_name, unit, run) in loads {
        let mut sides = Vec::new();
        for ends in [BENCH, TWIN] {
            step(&format!("perf record -a during {load_name}: {} ({})", ends.app, if ends.app == BENCH.app { path } else { "bare twin" }));
            let side = if ends.app == BENCH.app && !programs { "no-programs-" } else { "" };
            let data = dir.join(format!("perf-{side}{}-{unit}.data", ends.app));
            let mut perf = Command::new("perf")
                .args(["record", "-a", "-g", "-q", "-o"])
                .arg(&data)
                .stdout(Stdio::null())
                .spawn()
                .context("starting perf record")?;
            std::thread::sleep(Duration::from_millis(500));
            let rate = run(ends, dir);
            let _ = Command::new("kill").args(["-INT", &perf.id().to_string()]).status();
            perf.wait()?;
            let rate = rate?;
            let report = Command::new("perf")
                .args(["report", "--no-children", "--sort", "sym", "--stdio", "-g", "none", "-i"])
                .arg(&data)
                .output()
                .context("perf report")?;
            // "  3.16%  [k] lookup_nulls_elem_raw": share of all samples -> us per unit.
            let mut us = std::collections::BTreeMap::new();
            for line in String::from_utf8_lossy(&report.stdout).lines().filter(|l| !l.starts_with('#')) {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let [share, _, sym, ..] = words[..] {
                    // An idle CPU halts (`pv_native_safe_halt` in this VM): not a cost.
                    if sym.contains("safe_halt") {
                        continue;
                    }
                    if let Ok(share) = share.trim_end_matches('%').parse::<f64>() {
                        *us.entry(sym.to_string()).or_insert(0.0) += share / 100.0 * cores * 1e6 / rate;
                    }
                }
            }
            println!("  {}: {rate:.0} {unit}s/s", ends.app);
            if ends.app == BENCH.app && programs {
                crate::run(Command::new("python3").arg(&lines_script).arg("attribute").arg(&lines).arg(&data).arg("25"))
                    .context("program_lines.py attribute")?;
            }
            sides.push(us);
        }
        let (ours, bare) = (&sides[0], &sides[1]);
        let busy = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>();
        println!("  CPU us per {unit} (idle excluded): {path} {:.1}, bare twin {:.1}", busy(ours), busy(bare));
        let symbols: std::collections::BTreeSet<&String> = ours.keys().chain(bare.keys()).collect();
        let mut diff: Vec<(&String, f64)> =
            symbols.into_iter().map(|k| (k, ours.get(k).unwrap_or(&0.0) - bare.get(k).unwrap_or(&0.0))).collect();
        diff.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("  {:>8} {:>8} {:>8}  symbol", "ours", "bare", "diff");
        let show = |(k, d): &(&String, f64)| {
            println!("  {:>8.2} {:>8.2} {d:>+8.2}  {k}", ours.get(*k).unwrap_or(&0.0), bare.get(*k).unwrap_or(&0.0))
        };
        diff.iter().take(30).for_each(show);
        println!("  ...");
        diff.iter().rev().take(20).collect::<Vec<_>>().into_iter().rev().for_each(show);
        println!("  by kind (CPU us per {unit}: {path}, bare twin, difference):");
        for kind in CostKind::ALL {
            let of = |m: &std::collections::BTreeMap<String, f64>| {
                m.iter().filter(|(k, _)| CostKind::of(k) == kind).map(|(_, v)| v).sum::<f64>()
            };
            // (+ 0.0: an empty f64 sum is -0.0.)
            let (o, b) = (of(ours) + 0.0, of(bare) + 0.0);
            println!("  {:>8.2} {:>8.2} {:>+8.2}  {}", o, b, o - b, kind.label());
        }
    }
    Ok(())
}

/// What a kernel symbol in a profile is part of: the programs and what they call, or
/// the kernel's own path (which the fast path skips in part).
#[derive(Clone, Copy, PartialEq, Eq)]
enum CostKind {
    Programs,
    MapLookups,
    Helpers,
    TcHook,
    Kernel,
}

impl CostKind {
    const ALL: [CostKind; 5] = [CostKind::Programs, CostKind::MapLookups, CostKind::Helpers, CostKind::TcHook, CostKind::Kernel];

    fn of(symbol: &str) -> CostKind {
        let any = |names: &[&str]| names.iter().any(|n| symbol.starts_with(n));
        if symbol.starts_with("bpf_prog_") {
            CostKind::Programs
        } else if any(&["lookup_nulls_elem_raw", "htab_", "__htab_", "bpf_lru_", "prealloc_lru_", "pcpu_freelist", "bpf_map_"]) {
            CostKind::MapLookups
        } else if any(&["bpf_", "skb_do_redirect", "skb_ensure_writable", "inet_proto_csum_replace", "ktime_get_mono_fast_ns"]) {
            CostKind::Helpers
        } else if any(&["tc_run", "cls_bpf_classify", "__tcf_classify", "tcf_classify", "tcx_run"]) {
            CostKind::TcHook
        } else {
            CostKind::Kernel
        }
    }

    fn label(self) -> &'static str {
        match self {
            CostKind::Programs => "the programs' own code (bpf_prog_*)",
            CostKind::MapLookups => "their map lookups and updates (htab, LRU)",
            CostKind::Helpers => "their helpers (FIB, redirect, rewrite, clock)",
            CostKind::TcHook => "the tc hook that runs them",
            CostKind::Kernel => "everything else (the stack, the apps, the load)",
        }
    }
}

/// CPU seconds (user + system) that process `pid` has used.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (in parentheses, may hold spaces): fields 3.. ; utime and
    // stime are fields 14 and 15, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second: f64 = output(&["getconf", "CLK_TCK"]).trim().parse().ok()?;
    Some(ticks as f64 / per_second)
}

fn iptables_restore(ns: &str, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore"])
        .stdin(Stdio::piped())
        .spawn()
        .context("starting iptables-restore")?;
    child.stdin.take().expect("piped").write_all(rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("iptables-restore in {ns} failed ({status})");
    }
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of the rounds' ratios `path[i] / twin[i]`.
fn median_ratio(path: &[f64], twin: &[f64]) -> f64 {
    median(&path.iter().zip(twin).map(|(p, t)| p / t).collect::<Vec<_>>())
}

/// "[min-max]" of `v`, `d` decimals.
fn spread(v: &[f64], d: usize) -> String {
    let (lo, hi) = (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(0.0, f64::max));
    format!("[{lo:.d$}-{hi:.d$}]")
}

struct Cleanup {
    agent_bin: std::path::PathBuf,
    config: std::path::PathBuf,
    /// The nginx servers: killed and waited for before their namespaces go.
    servers: Vec<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        step("cleanup");
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .args(["down", "--config"])
            .arg(&self.config)
            .stderr(Stdio::null())
            .status();
        for ns in [ZEDBOX, GW, INTERNET].iter().chain(APPS.iter()).chain(load::TWIN_NAMESPACES.iter()) {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}
