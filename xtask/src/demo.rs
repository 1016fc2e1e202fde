//! `cargo xtask demo`: the seed walkthrough (../shared/seeds/000_*.txt), with
//! `docker exec X` read as `ip netns exec X`.
//!
//! World (the seed's): `zedbox` runs the agent; its uplinks eth0..eth2 are bridges with a
//! veth `kethN` to the router `gw` (192.168.N.1; zedbox has 192.168.N.2); eth3 is a plain
//! veth to gw (192.168.3.1, with a DHCP server) for the switch NI6. Behind gw the
//! `internet` host has 10.99.0.10 (stands for github.com / zededa.com) and 10.98.0.10
//! (stands for google.com); `cloud1` (192.168.111.1) and `cloud2` (192.168.222.1) run
//! strongSwan responders and serve HTTP on 192.168.0.1 behind their tunnels.
//! NI1 (10.10.1.0/24) and NI2 (192.168.1.0/24, eth1's very subnet) use eth0; NI3
//! (10.10.1.0/24 again) uses eth1; NI4 and NI5 (both 10.10.10.0/24) are VPNs over eth1 and
//! eth2 to cloud1 and cloud2 with identical selectors; NI6 is a switch bridging eth3.
//! app1 sits on NI1 and NI2, app2 on NI2 (port map 8080 -> 80), app3 is a VM on NI3 (a
//! tap, whose guest side is the netns `app3`, relayed as a hypervisor would), app4 on NI4,
//! app5 on NI5, app6 on NI6 (rate-limited). A mock DNS server in the internet host
//! (10.99.0.53) knows github.com and zededa.com (10.99.0.10) and google.com (10.98.0.10);
//! each app's resolv.conf names its first NI's gateway, where the agent's DNS proxy
//! answers (app6's names the internet's). Every check prints PASS or FAIL; any FAIL fails
//! the demo.
//!
//! The world outside the agent is netns-world's, the very one the integration tests build
//! (here under the seed's names); this file adds the seed's apps, servers and checks.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
// The VPN checks' poll (was `wait_for` here, at 200 ms).
use netns_world::wait_until as wait_for;
use netns_world::{
    programs::{HTTP_SERVER, MOCK_DNS, VM_RELAY},
    spawn_in, Proto, Responder, World, DNS_SERVER_IP, SWITCH_UPLINK,
};

pub(crate) const ZEDBOX: &str = "zedbox";
pub(crate) const GW: &str = "gw";
pub(crate) const INTERNET: &str = "internet";
pub(crate) const APPS: [&str; 3] = ["app1", "app2", "app3"];
/// The apps only the demo builds (the bench needs the first three).
const MORE_APPS: [&str; 3] = ["app4", "app5", "app6"];
const CLOUDS: [&str; 2] = ["cloud1", "cloud2"];
const NIS: [&str; 6] = ["ni1", "ni2", "ni3", "ni4", "ni5", "ni6"];
pub(crate) const STATE_DIR: &str = "/run/netns-agent";
/// The demo config's `flow_log`.
const FLOW_LOG: &str = "/run/netns-agent/flows.jsonl";
const UPLINKS: usize = 3;
/// The seed's world, by the seed's names.
const WORLD: World<'static> = World { zedbox: ZEDBOX, gw: GW, internet: INTERNET };
/// How long a server may take to listen: generous for the emulated VM on a busy machine.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// app1's addresses (NI1, NI2), app2's, app3's.
const APP1_NI1: &str = "10.10.1.2";
const APP1_NI2: &str = "192.168.1.20";
const APP2: &str = "192.168.1.10";
const APP3: &str = "10.10.1.2";
const APP6: &str = "192.168.3.6";
/// Where app4 and app5 reach their clouds, through the tunnels.
const CLOUD_LAN_IP: &str = "192.168.0.1";
pub(crate) const ALLOWED_SITE: &str = "10.99.0.10";
const BLOCKED_SITE: &str = "10.98.0.10";

const CONFIG: &str = include_str!("demo.toml");
/// `demo --eve`: the same scenario as EVE's controller sends it, and what it leaves to
/// the device.
const EVE_CONFIG: &str = "tests/eve/scenario.json";
const EVE_BINDINGS: &str = include_str!("demo-bindings.toml");

struct Demo {
    agent_bin: PathBuf,
    config: PathBuf,
    /// `--eve`: the agent runs from the seed's EdgeDevConfig and these bindings instead of
    /// `config` (which then serves `down` and `status`: the same state dir).
    eve: Option<(PathBuf, PathBuf)>,
    web_root: PathBuf,
    agent: Option<Child>,
    servers: Vec<Child>,
    failed: u32,
    /// The VPN NIs' and the clouds' IPsec backend: "kernel" or "libipsec".
    ipsec_backend: &'static str,
    /// `[agent] fast_path`.
    fast_path: bool,
}

/// `fast_path`: the agent's `[agent] fast_path` (false: `--no-fast-path`).
pub fn run(agent_bin: &Path, keep: bool, eve: bool, fast_path: bool) -> Result<()> {
    for ns in all_namespaces() {
        if Path::new("/run/netns").join(ns).exists() {
            bail!("netns {ns} already exists: a previous demo is still up (`cargo xtask demo` removes it when it ends; after --keep use the printed command)");
        }
    }
    let dir = std::env::temp_dir().join("netns-agent-demo");
    std::fs::create_dir_all(&dir)?;
    let ipsec_backend = if kernel_has_esp()? { "kernel" } else { "libipsec" };
    let mut demo = Demo {
        agent_bin: agent_bin.to_path_buf(),
        config: dir.join("demo.toml"),
        eve: eve.then(|| (crate::workspace_root().join(EVE_CONFIG), dir.join("demo-bindings.toml"))),
        web_root: dir.clone(),
        agent: None,
        servers: Vec::new(),
        failed: 0,
        ipsec_backend,
        fast_path,
    };
    let agent_table = if fast_path { "[agent]\n".to_string() } else { "[agent]\nfast_path = false\n".to_string() };
    let fill = |text: &str| text.replace("@backend", ipsec_backend).replacen("[agent]\n", &agent_table, 1);
    std::fs::write(&demo.config, fill(CONFIG))?;
    if let Some((_, bindings)) = &demo.eve {
        std::fs::write(bindings, fill(EVE_BINDINGS))?;
    }
    let result = demo.scenario();
    if keep && result.is_ok() {
        println!("\n--keep: everything stays up. Explore with e.g.");
        println!("  ip netns exec app1 curl {ALLOWED_SITE}");
        println!("  ip netns exec gw curl 192.168.0.2:8080");
        println!("  {} flows", agent_bin.display());
        println!("  bpftool map dump pinned /sys/fs/bpf/netns-agent/CT_V4");
        println!("Remove it with:");
        let pids: Vec<String> = demo.agent.iter().chain(demo.servers.iter()).map(|c| c.id().to_string()).collect();
        let dels: Vec<String> = all_namespaces().iter().filter(|n| !NIS.contains(n)).map(|n| format!("ip netns del {n}")).collect();
        println!(
            "  kill {}; nsenter --net=/run/netns/{ZEDBOX} {} down --config {}; {}",
            pids.join(" "),
            agent_bin.display(),
            demo.config.display(),
            dels.join("; ")
        );
        // The agent and the servers keep running; this process must not reap them.
        std::mem::forget(demo);
    }
    result
}

/// Can this kernel do ESP (xfrm with esp4)? Asked by adding an ESP state in a throwaway
/// netns; the kernel loads the module if it has one.
fn kernel_has_esp() -> Result<bool> {
    let probe = format!("netns-demo-esp-probe-{}", std::process::id());
    sh(&["ip", "netns", "add", &probe])?;
    let added = Command::new("ip")
        .args(["-n", &probe, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x100"])
        .args(["mode", "tunnel", "enc", "cbc(aes)", "0x000102030405060708090a0b0c0d0e0f"])
        .args(["auth", "hmac(sha1)", "0x000102030405060708090a0b0c0d0e0f10111213"])
        .stderr(Stdio::null())
        .status();
    sh(&["ip", "netns", "del", &probe])?;
    let has = added.context("running ip xfrm")?.success();
    step(if has {
        "IPsec: this kernel has ESP: the VPN NIs and the clouds use backend = \"kernel\" (xfrm)"
    } else {
        "IPsec: this kernel has no ESP: the VPN NIs and the clouds use backend = \"libipsec\" (strongSwan's userspace ESP)"
    });
    Ok(has)
}

fn all_namespaces() -> Vec<&'static str> {
    let mut v = vec![ZEDBOX, GW, INTERNET];
    v.extend(APPS);
    v.extend(MORE_APPS);
    v.extend(CLOUDS);
    v.extend(NIS);
    v
}

impl Demo {
    fn scenario(&mut self) -> Result<()> {
        step("the world: zedbox with uplinks eth0..eth3 to the router gw; the internet, cloud1 and cloud2 behind it");
        build_world()?;
        build_seed_world()?;
        self.outside_services()?;

        let source: Vec<&std::ffi::OsStr> = match &self.eve {
            Some((json, bindings)) => {
                step(&format!("agent: netns-agent run --eve-config {} --bindings {} (inside zedbox)", json.display(), bindings.display()));
                vec!["--eve-config".as_ref(), json.as_os_str(), "--bindings".as_ref(), bindings.as_os_str()]
            }
            None => {
                step("agent: netns-agent run (inside zedbox)");
                vec!["--config".as_ref(), self.config.as_os_str()]
            }
        };
        let agent = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .arg("run")
            .args(source)
            .spawn()
            .context("starting the agent")?;
        self.agent = Some(agent);
        self.wait_for_agent()?;

        step("web servers in each app and on the internet sites; the internet's DNS server");
        step("DHCP: the VM app3's guest NIC asks NI3's server; app6 asks gw's, behind the switch NI6");
        let script = self.web_root.join("udhcpc.sh");
        netns_world::programs::write_udhcpc_script(&script)?;
        sh(&["ip", "-n", "app3", "link", "set", "eth0", "address", "02:16:3e:03:03:01", "up"])?;
        for (ns, ifname) in [("app3", "eth0"), ("app6", "nbu1x6.1")] {
            let _ = crate::run(
                Command::new("ip").args(["netns", "exec", ns, "busybox", "udhcpc", "-i", ifname, "-n", "-q", "-t", "5", "-s"]).arg(&script),
            );
        }
        let leased = |ns: &str, ifname: &str, ip: &str| {
            output(&["ip", "-n", ns, "-4", "-o", "addr", "show", ifname]).contains(&format!("inet {ip}/24"))
        };
        let (app3_leased, app6_leased) = (leased("app3", "eth0", APP3), leased("app6", "nbu1x6.1", APP6));

        for (ns, ip, page) in [
            ("app1", APP1_NI1, "app1-data"),
            ("app1", APP1_NI2, "app1-data"),
            ("app2", APP2, "app2-data"),
            (INTERNET, ALLOWED_SITE, "internet-data"),
            (INTERNET, BLOCKED_SITE, "blocked-site-data"),
            (CLOUDS[0], CLOUD_LAN_IP, "cloud1-data"),
            (CLOUDS[1], CLOUD_LAN_IP, "cloud2-data"),
        ] {
            self.http_server(ns, ip, page)?;
        }
        if app3_leased {
            self.http_server("app3", APP3, "app3-data")?;
        }
        self.spawn_server(INTERNET, &["python3", "-c", MOCK_DNS])?;
        netns_world::wait_listening(INTERNET, DNS_SERVER_IP, 53, Proto::Udp, LISTEN_TIMEOUT)?;

        step("checks (seed walkthrough)");
        let addrs = output(&["ip", "netns", "exec", "app1", "ip", "-4", "-o", "addr"]);
        self.check(
            "app1 has addresses in both networks (nbu1x1.1 in NI1, nbu2x1.1 in NI2)",
            addrs.contains(&format!("nbu1x1.1    inet {APP1_NI1}")) && addrs.contains(&format!("nbu2x1.1    inet {APP1_NI2}")),
        );
        self.check(
            "app1: curl github.com: ALLOWED (host ACE; the DNS proxy put its address in app1's host set)",
            curl("app1", &[], "github.com").as_deref() == Some("internet-data"),
        );
        self.check(
            "app1: curl --interface nbu1x1.1 google.com: BLOCKED (times out)",
            curl("app1", &["--interface", "nbu1x1.1"], "google.com").is_none(),
        );
        let flows = output(&[self.agent_bin.to_str().unwrap(), "flows", "--json"]);
        self.check(
            "the allowed flow: mark 0x01400001, source translated to NI1's veth 169.254.100.2 and eth0 192.168.0.2",
            flow_has(&flows, ALLOWED_SITE, |f| f.mark == "0x01400001" && translated_to(f, "169.254.100.2:"))
                && flow_has(&flows, ALLOWED_SITE, |f| translated_to(f, "192.168.0.2:")),
        );
        self.check(
            "the dropped flow is recorded too: mark 0x01bfffff (app 1, drop, default-drop ACE)",
            flow_has(&flows, BLOCKED_SITE, |f| f.mark == "0x01bfffff" && f.verdict == crate::reports::Verdict::Drop),
        );
        self.check(
            "app1: curl --interface nbu2x1.1 app2: ALLOWED (NI2's DNS proxy names app2; eidset + fport 80)",
            curl("app1", &["--interface", "nbu2x1.1"], "app2").as_deref() == Some("app2-data"),
        );
        self.check(
            "hairpin app1 -> 192.168.0.2:8080 -> app2 inside the box (same uplink eth0)",
            curl("app1", &["--interface", "nbu1x1.1"], "192.168.0.2:8080").as_deref() == Some("app2-data"),
        );
        let nat = output(&[self.agent_bin.to_str().unwrap(), "flows", "--json"]);
        self.check(
            "  ... translated in zedbox from NI1's veth address to NI2's (169.254.100.2 -> 169.254.100.6:8080)",
            nat.contains("\"src\": \"169.254.100.2\"") && nat.contains("\"to\": \"169.254.100.6:8080\""),
        );
        self.check(
            "app1 via NI2 -> 192.168.0.2:8080: BLOCKED (no ACE of app1 in NI2 allows it; the seed's TODO)",
            curl_via_ni2_default_route().is_none(),
        );
        // The walkthrough's `curl 169.254.169.254; echo $?`: a page, and 0.
        self.check(
            "app1: curl 169.254.169.254: the metadata server's index of what it serves",
            curl("app1", &["-f"], "169.254.169.254")
                .is_some_and(|page| page.contains("eve/v1/network.json") && page.contains("openstack/latest/meta_data.json")),
        );
        for app in APPS {
            self.check(
                &format!("{app}: curl 169.254.169.254/eve/v1/hostname: its NI's metadata server knows it"),
                curl(app, &[], "169.254.169.254/eve/v1/hostname").as_deref() == Some(app),
            );
        }
        self.check(
            "app2: curl app1: ALLOWED (NI2's DNS proxy names app1; eidset)",
            curl("app2", &[], "app1").as_deref() == Some("app1-data"),
        );
        self.check("app2: curl github.com: BLOCKED (not in app2's ACL)", curl("app2", &[], "github.com").is_none());
        self.check("app3: curl zededa.com: ALLOWED", curl("app3", &[], "zededa.com").as_deref() == Some("internet-data"));
        self.check(
            "app3 -> 192.168.0.2:8080 -> app2, hairpinned outside the box (NI3 uses eth1)",
            curl("app3", &[], "192.168.0.2:8080").as_deref() == Some("app2-data"),
        );
        let nat = output(&[self.agent_bin.to_str().unwrap(), "flows", "--json"]);
        self.check(
            "  ... it came back in on eth0 from the router as 192.168.1.2 (eth1), then 169.254.100.5 into NI2",
            nat.contains("\"src\": \"192.168.1.2\"") && nat.contains("\"dport\": 8080"),
        );
        self.check(
            "zedbox -> app1 (curl --interface veth1 10.10.1.2:80): app1-data",
            curl(ZEDBOX, &["--interface", "veth1"], APP1_NI1).as_deref() == Some("app1-data"),
        );
        self.check(
            "zedbox -> app3, the same 10.10.1.2 in NI3 (--interface veth3): app3-data",
            curl(ZEDBOX, &["--interface", "veth3"], APP3).as_deref() == Some("app3-data"),
        );
        self.check(
            "gw -> 192.168.0.2:8080 (port map from outside): app2-data",
            curl(GW, &[], "192.168.0.2:8080").as_deref() == Some("app2-data"),
        );
        self.check(
            "app3 is a VM: tap nbu1x3 is in NI3's bridge, its guest took 10.10.1.2 from NI3's DHCP server",
            app3_leased && output(&["ip", "-n", "ni3", "-o", "link", "show", "nbu1x3"]).contains("master br"),
        );

        step("VPN NIs: charon in ni4 and ni5 (netns-agent status; swanctl over their vici sockets)");
        let config = self.config.to_str().unwrap().to_string();
        let tunnel = |ni: &str| {
            let status: crate::reports::Status =
                serde_json::from_str(&output(&[self.agent_bin.to_str().unwrap(), "status", "--json", "--config", &config])).ok()?;
            status.networks.into_iter().find(|n| n.name == ni)?.tunnel
        };
        let up = |ni: &str| wait_for(Duration::from_secs(30), || tunnel(ni).is_some_and(|t| t.state == crate::reports::TunnelState::Up));
        let (up4, up5) = (up("ni4"), up("ni5"));
        for ni in ["ni4", "ni5"] {
            println!("--- {ni}: swanctl --list-sas");
            let vici = format!("unix://{STATE_DIR}/vpn-{ni}/run/charon.vici");
            crate::run(Command::new("swanctl").args(["--list-sas", "--uri", &vici]))?;
        }
        self.check(
            "ni4: CHILD_SA gw up to cloud1 (192.168.111.1), 10.10.10.0/24 === 192.168.0.0/24, ESP in UDP through eth1's NAT",
            up4 && tunnel("ni4")
                .is_some_and(|t| t.encap.as_deref() == Some("TUNNEL-in-UDP") && t.remote.is_some_and(|r| r.contains("192.168.111.1"))),
        );
        self.check("ni5: CHILD_SA gw up to cloud2 (192.168.222.1), the very same selectors", up5);
        let esp_sas = |ni: &str| output(&["ip", "-n", ni, "xfrm", "state"]).matches("proto esp").count();
        if self.ipsec_backend == "kernel" {
            self.check(
                "  ... the kernel holds each tunnel's ESP SAs, in the NI's own netns (ip -n ni4/ni5 xfrm state)",
                esp_sas("ni4") >= 2 && esp_sas("ni5") >= 2,
            );
        } else {
            self.check(
                "  ... charon does ESP itself (libipsec): no ESP SAs in the kernel (ip -n ni4/ni5 xfrm state)",
                esp_sas("ni4") == 0 && esp_sas("ni5") == 0,
            );
        }
        self.check(
            "app4: curl 192.168.0.1: cloud1-data (through NI4's tunnel)",
            curl("app4", &[], CLOUD_LAN_IP).as_deref() == Some("cloud1-data"),
        );
        self.check(
            "app5: curl 192.168.0.1: cloud2-data (through NI5's tunnel)",
            curl("app5", &[], CLOUD_LAN_IP).as_deref() == Some("cloud2-data"),
        );
        let flows = output(&[self.agent_bin.to_str().unwrap(), "flows", "--json"]);
        self.check(
            "  ... flows of app4 and app5 to 192.168.0.1:80, not translated (encrypted in the NI instead)",
            flow_has(&flows, CLOUD_LAN_IP, |f| f.app == "app4")
                && flow_has(&flows, CLOUD_LAN_IP, |f| f.app == "app5")
                && !flow_has(&flows, CLOUD_LAN_IP, |f| translated_to(f, "169.254.100.")),
        );

        step("the switch NI6: eth3 bridged with app6's port; app6 rate-limited to 192.168.0.0/16");
        self.check("app6 took 192.168.3.6 from gw's DHCP server through the bridged eth3", app6_leased);
        self.check(
            "app6: curl 192.168.0.2:8080: app2-data (hairpin outside the box, under the limit ACE)",
            curl("app6", &[], "192.168.0.2:8080").as_deref() == Some("app2-data"),
        );
        self.check("app6: curl google.com: BLOCKED", curl("app6", &[], "google.com").is_none());
        let flows = output(&[self.agent_bin.to_str().unwrap(), "flows", "--json"]);
        self.check(
            "  ... and recorded: mark 0x06bfffff (EVE keeps no conntrack for it; we do)",
            flow_has(&flows, BLOCKED_SITE, |f| f.app == "app6" && f.mark == "0x06bfffff" && f.verdict == crate::reports::Verdict::Drop),
        );
        let status: Result<crate::reports::Status, _> =
            serde_json::from_str(&output(&[self.agent_bin.to_str().unwrap(), "status", "--json", "--config", &config]));
        self.check(
            "app6's limit ACE (5/s, burst 15) counted the packets it passed",
            status.is_ok_and(|s| s.limits.iter().any(|l| l.app == "app6" && l.passed > 0)),
        );

        let rules = ["zedbox", "ni1", "ni2", "ni3", "ni4", "ni5", "ni6"]
            .iter()
            .map(|ns| output(&["ip", "netns", "exec", ns, "iptables-save"]))
            .collect::<String>();
        self.check("no iptables rules in zedbox or any NI (all of it is eBPF)", !rules.lines().any(|l| l.starts_with("-A")));

        step("flow table: netns-agent flows");
        crate::run(Command::new(&self.agent_bin).arg("flows"))?;
        step("maps are readable with bpftool (BTF): the first entries of CT_V4");
        crate::run(Command::new("sh").args(["-c", "bpftool map dump pinned /sys/fs/bpf/netns-agent/CT_V4 | head -30"]))?;
        step("the flow log of this run (/run/netns-agent/flows.jsonl): records by kind, the last ten");
        let log = std::fs::read_to_string(FLOW_LOG).unwrap_or_default();
        let records: Vec<crate::reports::LogRecord> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let mut kinds = std::collections::BTreeMap::new();
        for r in &records {
            *kinds.entry(r.kind.as_str()).or_insert(0) += 1;
        }
        println!("  {} records: {kinds:?}", records.len());
        for line in log.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev() {
            println!("  {line}");
        }
        self.check(
            "the flow log holds the run's flows: starts, and app1's dropped attempt at the blocked site",
            kinds.contains_key("start")
                && records.iter().any(|r| r.kind == "dropped" && r.app == "app1" && r.dst.as_deref() == Some(BLOCKED_SITE)),
        );
        self.check(
            "  ... with the DNS requests the NIs' proxies answered, and what the flows' remotes were resolved from",
            records.iter().any(|r| r.kind == "dns") && records.iter().any(|r| r.dns_name.is_some()),
        );
        step("metrics: a few lines of http://127.0.0.1:9090/metrics (in zedbox)");
        let metrics = output(&["ip", "netns", "exec", "zedbox", "curl", "-s", "http://127.0.0.1:9090/metrics"]);
        let shown = [
            "netns_agent_port_packets_total{ni=\"ni1\",app=\"app1\"",
            "netns_agent_datapath_drops_total{reason=\"acl\"}",
            "netns_agent_ace_flows_total{ni=\"ni6\"",
            "netns_agent_dns_queries_total",
            "netns_agent_vpn_tunnel_up",
            "netns_agent_map_entries",
        ];
        for line in metrics.lines().filter(|l| shown.iter().any(|p| l.starts_with(p))) {
            println!("  {line}");
        }
        println!("  ({} samples in all)", metrics.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).count());
        let value = |prefix: &str| {
            metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0)
        };
        self.check(
            "the metrics count app1's traffic, the ACL's drops and both VPN tunnels up",
            value("netns_agent_port_packets_total{ni=\"ni1\",app=\"app1\"") > 0.0
                && value("netns_agent_datapath_drops_total{reason=\"acl\"}") > 0.0
                && metrics.lines().filter(|l| l.starts_with("netns_agent_vpn_tunnel_up{") && l.ends_with(" 1")).count() == 2,
        );
        let fast =
            netns_ebpf_common::Stat::FAST_HOPS.map(|c| value(&format!("netns_agent_datapath_decisions_total{{counter=\"{}\"}}", c.name())));
        println!("  fast path (packets per hop: from app, past the NI veth, to uplink, translated there, from uplink, translated back to the app there, to app, into the app): {fast:?}");
        match self.fast_path {
            true => self.check("the fast path carried the answered flows, every hop of it", fast.iter().all(|n| *n > 0.0)),
            false => self.check("fast_path = false: no packet took the fast path", fast.iter().all(|n| *n == 0.0)),
        }
        step("DNS requests seen by the NIs' proxies: netns-agent dns-log");
        crate::run(Command::new(&self.agent_bin).arg("dns-log"))?;
        step("netns-agent status");
        crate::run(Command::new(&self.agent_bin).args(["status", "--config", &config]))?;
        if self.failed > 0 {
            bail!("{} demo checks failed", self.failed);
        }
        println!("\nall demo checks passed");
        Ok(())
    }

    /// What runs outside the box: gw's DHCP server on eth3, the clouds' IKE responders,
    /// the hypervisor of the VM app3.
    fn outside_services(&mut self) -> Result<()> {
        let leases = self.web_root.join("gw.leases");
        self.spawn_server(
            GW,
            &[
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=up3",
                "--bind-interfaces",
                "--dhcp-range=192.168.3.100,192.168.3.150,255.255.255.0,1h",
                &format!("--dhcp-host=02:16:3e:06:06:01,{APP6}"),
                "--dhcp-option=option:router,192.168.3.1",
                "--dhcp-option=option:dns-server,10.99.0.53",
                &format!("--dhcp-leasefile={}", leases.display()),
                "--pid-file",
            ],
        )?;
        for (cloud, addr, psk) in [(CLOUDS[0], "192.168.111.1", "cloud1-secret"), (CLOUDS[1], "192.168.222.1", "cloud2-secret")] {
            self.strongswan_responder(cloud, addr, psk)?;
        }
        let mut relay =
            Command::new("python3").args(["-c", VM_RELAY]).stdout(Stdio::piped()).spawn().context("starting the VM's frame relay")?;
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(relay.stdout.take().unwrap()), &mut line)?;
        self.servers.push(relay);
        if line.trim() != "ready" {
            bail!("the VM's frame relay did not create its taps");
        }
        Ok(())
    }

    /// An IKEv2 responder for 192.168.0.0/24 === 10.10.10.0/24 with `psk` (see
    /// `netns_world::Responder`); prints swanctl's report of what it loaded.
    fn strongswan_responder(&mut self, ns: &str, addr: &str, psk: &str) -> Result<()> {
        let dir = self.web_root.join(format!("swan-{ns}"));
        let responder = Responder {
            ns,
            dir: &dir,
            local_addr: addr,
            psk,
            local_ts: "192.168.0.0/24",
            remote_ts: "10.10.10.0/24",
            backend: self.ipsec_backend,
        };
        print!("{}", responder.start(&mut self.servers, Duration::from_secs(20))?);
        Ok(())
    }

    fn spawn_server(&mut self, ns: &str, args: &[&str]) -> Result<()> {
        self.servers.push(spawn_in(ns, args)?);
        Ok(())
    }

    fn check(&mut self, name: &str, ok: bool) {
        println!("  {} {name}", if ok { "PASS" } else { "FAIL" });
        self.failed += (!ok) as u32;
    }

    fn http_server(&mut self, ns: &str, ip: &str, page: &str) -> Result<()> {
        let root = self.web_root.join(format!("{ns}-{ip}"));
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("index.html"), format!("{page}\n"))?;
        let root = root.to_str().context("the web root is not UTF-8")?;
        self.spawn_server(ns, &["python3", "-c", HTTP_SERVER, ip, "80", root])?;
        wait_listening(ns, ip, 80)
    }

    fn wait_for_agent(&mut self) -> Result<()> {
        crate::wait_applied(Path::new(STATE_DIR), self.agent.as_mut().unwrap(), Duration::from_secs(60))
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
            stop_agent(&mut agent).ok();
        }
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ZEDBOX}"))
            .arg(&self.agent_bin)
            .args(["down", "--config"])
            .arg(&self.config)
            .status();
        for i in 0..=3 {
            let path = if i == 0 { FLOW_LOG.to_string() } else { format!("{FLOW_LOG}.{i}") };
            let _ = std::fs::remove_file(path);
        }
        let _ = std::fs::remove_dir(STATE_DIR);
        for ns in all_namespaces().iter().filter(|n| !NIS.contains(n)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
        for app in APPS.iter().chain(MORE_APPS.iter()) {
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(app));
        }
    }
}

/// What the seed adds to the bench's world: eth3 (a plain veth, as a switch NI moves it),
/// the clouds behind gw with 192.168.0.1 on their lo, app4-app6 and their resolvers.
fn build_seed_world() -> Result<()> {
    for ns in MORE_APPS.iter().chain(CLOUDS.iter()) {
        netns_world::add_netns(ns)?;
    }
    WORLD.add_uplink(SWITCH_UPLINK)?;
    for (cloud, wan_ip) in CLOUDS.iter().zip(["192.168.111.1", "192.168.222.1"]) {
        // gw's end of the link is named after the cloud.
        WORLD.add_cloud(cloud, cloud, wan_ip)?;
    }
    for (app, server) in [("app4", "10.10.10.1"), ("app5", "10.10.10.1"), ("app6", DNS_SERVER_IP)] {
        netns_world::resolv_conf(app, &[server])?;
    }
    Ok(())
}

/// The seed's world outside the agent's control: namespaces, uplinks, router, internet.
pub(crate) fn build_world() -> Result<()> {
    for ns in [ZEDBOX].iter().chain(APPS.iter()) {
        netns_world::add_netns(ns)?;
    }
    WORLD.build(UPLINKS)?;
    WORLD.add_seed_sites()?;
    // Each app asks its first NI's gateway (the agent's DNS proxy).
    for (app, servers) in [("app1", ["10.10.1.1", "192.168.1.1"].as_slice()), ("app2", &["192.168.1.1"]), ("app3", &["10.10.1.1"])] {
        netns_world::resolv_conf(app, servers)?;
    }
    Ok(())
}

/// The seed: `ip route del default; ip route add default via 192.168.1.1 dev nbu2x1.1;
/// curl 192.168.0.2:8080` (then put the default route back).
fn curl_via_ni2_default_route() -> Option<String> {
    let _ = sh(&["ip", "-n", "app1", "route", "replace", "default", "via", "192.168.1.1", "dev", "nbu2x1.1"]);
    let out = curl("app1", &[], "192.168.0.2:8080");
    let _ = sh(&["ip", "-n", "app1", "route", "replace", "default", "via", "10.10.1.1", "dev", "nbu1x1.1"]);
    out
}

/// Whether some flow record (of `flows --json`) toward `dst` passes `what`.
fn flow_has(flows_json: &str, dst: &str, what: impl Fn(&crate::reports::FlowRecord) -> bool) -> bool {
    let Ok(report) = serde_json::from_str::<crate::reports::Flows>(flows_json) else { return false };
    report.flows.iter().filter(|f| f.dst == dst).any(what)
}

/// One of the flow's source translations starts with `prefix`.
fn translated_to(f: &crate::reports::FlowRecord, prefix: &str) -> bool {
    f.translated.iter().any(|t| t.starts_with(prefix))
}

pub(crate) fn step(msg: &str) {
    println!("\n=== {msg}");
}

/// Stops an agent the way a device's service manager would (SIGTERM: its data path
/// stays) and reaps it.
pub(crate) fn stop_agent(agent: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
    agent.wait()
}

pub(crate) fn sh(args: &[&str]) -> Result<()> {
    crate::run(Command::new(args[0]).args(&args[1..]))
}

pub(crate) fn output(args: &[&str]) -> String {
    Command::new(args[0]).args(&args[1..]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// Waits until a TCP server listens on ip:port in `ns`.
pub(crate) fn wait_listening(ns: &str, ip: &str, port: u16) -> Result<()> {
    netns_world::wait_listening(ns, ip, port, Proto::Tcp, LISTEN_TIMEOUT)
}

pub(crate) fn curl(ns: &str, extra: &[&str], target: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-s", "--max-time", "3"])
        .args(extra)
        .arg(if target.contains('/') { format!("http://{target}") } else { format!("http://{target}/") })
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
