//! Apps are untrusted: each test sends an attack from a real app netns (scapy frames on
//! the app's own interface), counts what arrived where it was aimed, and names the
//! counter that saw it. What must get through: nothing. Legitimate traffic still flows.

use std::time::Duration;

use netns_agent::flows::Verdict;
use netns_tests::{load_size, py_script, scaled, Background, Scenario, INET_IP};

/// NI1 on eth0 with app1 (may reach the internet host's port 7000 only) and app2 (may
/// reach the internet host's UDP 9000), and user data for app2.
const LOCAL: &str = r##"
[[uplink]]
name = "eth0"
dns = ["10.99.0.10"]

[[network]]
name = "@ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [
  { id = 1, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7000 } },
  { id = 2, match = { ip = "10.99.0.10/32", protocol = "udp", fport = 9001 } },
]

[[app]]
name = "app2"
netns = "@app2"
user_data = "#cloud-config\npassword: app2-secret\n"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.3"
acl = [{ id = 1, match = { ip = "10.99.0.10/32", protocol = "udp", fport = 9000 } }]
"##;

fn local() -> Scenario {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, LOCAL);
    s.start_agent();
    s
}

/// Starts a counter of arrivals in `ns` (see count_arrivals.py) and waits until it
/// listens.
fn counter(s: &Scenario, ns: &str, args: &[&str]) -> Background {
    let mut full = vec!["python3", "-u"];
    let script = py_script("count_arrivals.py");
    full.push(&script);
    full.extend_from_slice(args);
    let mut bg = s.background(ns, &full);
    assert_eq!(bg.read_line().trim(), "ready", "the counter did not start");
    bg
}

fn arrived(bg: Background) -> u64 {
    let out = bg.finish();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("counter output: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn attack(s: &Scenario, ns: &str, args: &[&str]) -> u64 {
    // scapy is Debian's (python3-scapy), for Debian's python.
    let mut full = vec!["/usr/bin/python3", &py_script("attacks.py")[..]].into_iter().map(str::to_string).collect::<Vec<_>>();
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let out = s.exec(ns, &full);
    assert!(out.status.success(), "attack failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn report(what: &str, sent: u64, through: u64, counter: &str, before: u64, after: u64) {
    println!("{what}: sent {sent}, through {through}; {counter} {before} -> {after}");
}

#[test]
fn spoofed_source_addresses_and_macs_get_nowhere() {
    let s = local();
    let (app1, inet) = (s.app("app1").to_string(), s.inet.clone());
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    // app1 poses as app2 (whose ACL allows UDP 9000 to the internet host).
    let c = counter(&s, &inet, &["udp", &secs, "evil", INET_IP, "9000"]);
    let before = s.counter("drop_spoofed");
    let sent = attack(&s, &app1, &["spoof-ip", "nbu1x1.1", "10.10.1.3", INET_IP, "9000", "20"]);
    let through = arrived(c);
    let after = s.counter("drop_spoofed");
    report("app1 sends as app2 (10.10.1.3)", sent, through, "drop_spoofed", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent);

    // app1 with its own address but another MAC (to an allowed destination).
    let c = counter(&s, &inet, &["udp", &secs, "evil", INET_IP, "9001"]);
    let before = s.counter("drop_spoofed");
    let sent = attack(&s, &app1, &["spoof-mac", "nbu1x1.1", "02:de:ad:be:ef:01", INET_IP, "9001", "20"]);
    let through = arrived(c);
    let after = s.counter("drop_spoofed");
    report("app1 sends from a foreign MAC", sent, through, "drop_spoofed", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent);

    // The same datagrams from app1 as itself arrive (the check is not a blanket drop).
    let c = counter(&s, &inet, &["udp", &secs, "evil", INET_IP, "9001"]);
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor i in range(5): s.sendto(b'evil but honest', (sys.argv[1], 9001))";
    assert!(s.python(&app1, code, &[INET_IP]).status.success());
    assert_eq!(arrived(c), 5, "app1's own datagrams arrive");
}

#[test]
fn arp_claiming_a_neighbours_address_is_dropped() {
    let s = local();
    let (app1, app2, ni1) = (s.app("app1").to_string(), s.app("app2").to_string(), s.ni("ni1").to_string());
    // The gateway knows app2's real MAC first (a DNS query: implicitly allowed).
    assert!(s.dns_a(&app2, "10.10.1.1", "app1").is_some());
    let app1_mac = String::from_utf8_lossy(&s.exec(&app1, &["cat", "/sys/class/net/nbu1x1.1/address"]).stdout).trim().to_string();
    let before = s.counter("drop_spoofed");
    let sent = attack(&s, &app1, &["arp-claim", "nbu1x1.1", "10.10.1.3", "10"]);
    std::thread::sleep(Duration::from_millis(500));
    let neigh = String::from_utf8_lossy(&s.exec(&ni1, &["ip", "neigh", "show", "10.10.1.3"]).stdout).to_lowercase();
    let after = s.counter("drop_spoofed");
    let through = u64::from(neigh.contains(&app1_mac));
    report("app1 claims 10.10.1.3 by ARP", sent, through, "drop_spoofed", before, after);
    assert_eq!(through, 0, "the gateway's neighbour entry for app2 points at app1: {neigh}");
    assert!(after >= before + sent);
    // app2 still gets its answers.
    assert!(s.dns_a(&app2, "10.10.1.1", "app1").is_some());
}

#[test]
fn a_neighbours_user_data_is_not_served_to_a_spoofer() {
    let s = local();
    let app1 = s.app("app1").to_string();
    let own_meta_data = |s: &Scenario| {
        let out = s.exec(&app1, &["curl", "-sS", "--max-time", "3", "--interface", "10.10.1.2", "http://169.254.169.254/meta-data"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(body.contains("app1"), "app1's own meta-data: {body}{}", String::from_utf8_lossy(&out.stderr));
    };
    own_meta_data(&s);
    // app1 takes app2's address as a second one on its interface and asks as app2.
    assert!(s.exec(&app1, &["ip", "addr", "add", "10.10.1.3/32", "dev", "nbu1x1.1"]).status.success());
    let before = s.counter("drop_spoofed");
    let mut through = 0;
    for _ in 0..3 {
        let out = s.exec(&app1, &["curl", "-s", "--max-time", "3", "--interface", "10.10.1.3", "http://169.254.169.254/user-data"]);
        if String::from_utf8_lossy(&out.stdout).contains("app2-secret") {
            through += 1;
        }
    }
    let after = s.counter("drop_spoofed");
    report("app1 asks 169.254.169.254/user-data as 10.10.1.3", 3, through, "drop_spoofed", before, after);
    assert_eq!(through, 0);
    assert!(after > before);
    // Back as itself (its kernel may have marked the gateway unreachable while its ARP
    // requests named 10.10.1.3), app1 gets its own meta-data.
    assert!(s.exec(&app1, &["ip", "addr", "del", "10.10.1.3/32", "dev", "nbu1x1.1"]).status.success());
    assert!(s.exec(&app1, &["ip", "neigh", "flush", "dev", "nbu1x1.1"]).status.success());
    own_meta_data(&s);
}

/// A DHCP message names its client inside (`chaddr`), and dnsmasq keys its leases by
/// that: app1, in frames of its own MAC, declines app2's address in app2's name (which
/// would cost app2 its lease), releases it from its own address and a port that is not
/// DHCP's (dnsmasq takes a message from any port), and asks for leases under a made-up
/// MAC. None of it reaches dnsmasq; app1's own DISCOVER, sent after them, does.
#[test]
fn dhcp_messages_naming_another_client_are_dropped() {
    let s = local();
    let app1 = s.app("app1").to_string();
    let (app1_mac, app2_mac) = (s.link_mac(&app1, "nbu1x1.1"), s.link_mac(s.app("app2"), "nbu1x2.1"));
    let made_up = "02:de:ad:be:ef:02";
    let before = s.counter("drop_spoofed");
    let sent = attack(&s, &app1, &["dhcp-as", "nbu1x1.1", &app2_mac, "decline", "10.10.1.3", "5"])
        + attack(&s, &app1, &["dhcp-as", "nbu1x1.1", &app2_mac, "release", "10.10.1.3", "5", "10.10.1.2", "12345", "10.10.1.1"])
        + attack(&s, &app1, &["dhcp-as", "nbu1x1.1", made_up, "discover", "10.10.1.3", "5"]);
    let after = s.counter("drop_spoofed");
    attack(&s, &app1, &["dhcp-as", "nbu1x1.1", &app1_mac, "discover", "10.10.1.2", "1"]);
    // dnsmasq logs each message it gets (log-dhcp), and the agent passes its log on.
    let dnsmasq_lines =
        |mac: &str| s.agent_log().lines().filter(|l| l.contains("dnsmasq") && l.contains("DHCP") && l.contains(mac)).count();
    let own = netns_tests::wait_until(scaled(Duration::from_secs(10)), || dnsmasq_lines(&app1_mac) > 0);
    let through = (dnsmasq_lines(&app2_mac) + dnsmasq_lines(made_up)) as u64;
    report("app1 sends DHCP messages naming app2's and a made-up MAC", sent, through, "drop_spoofed", before, after);
    assert!(own.is_some(), "app1's own DISCOVER reaches dnsmasq:\n{}", s.agent_log());
    assert_eq!(through, 0, "{}", s.agent_log());
    assert!(after >= before + sent);
}

#[test]
fn icmp_errors_cannot_carry_data_past_the_acl() {
    let s = local();
    let (app1, inet, gw) = (s.app("app1").to_string(), s.inet.clone(), s.gw.clone());
    // app1's allowed UDP flow 40000 -> inet:9001 is live.
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('10.10.1.2', 40000))\ns.sendto(b'hello', (sys.argv[1], 9001))";
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    let c = counter(&s, &inet, &["udp", &secs, "hello", INET_IP, "9001"]);
    assert!(s.python(&app1, code, &[INET_IP]).status.success());
    assert_eq!(arrived(c), 1, "the allowed flow works");
    // Errors quoting it, sent to the router (192.168.0.1), which app1's ACL does not allow.
    let c = counter(&s, &gw, &["icmp", &secs, "evil exfil"]);
    let before = s.counter("drop_icmp_mismatch");
    let sent = attack(&s, &app1, &["icmp-exfil", "nbu1x1.1", "192.168.0.1", INET_IP, "40000", "9001", "10"]);
    let through = arrived(c);
    let after = s.counter("drop_icmp_mismatch");
    report("ICMP errors to a blocked host quoting an allowed flow", sent, through, "drop_icmp_mismatch", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent);
}

/// A switch NI: the apps' addresses come from outside, so only their MACs are enforced.
/// app1 (whose ACL allows nothing) sends with app2's address and the tuple of app2's live
/// flow: the conntrack entry is app2's port's, and gives app1 nothing.
const SWITCH: &str = r#"
[[uplink]]
name = "eth3"

[[network]]
name = "@ni1"
kind = "switch"
subnet = "192.168.3.0/24"
gateway = "192.168.3.1"
uplink = "eth3"

[[app]]
name = "app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
acl = [{ id = 1, match = { ip = "10.0.0.0/8" }, action = "drop" }]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni1"
acl = [{ id = 1, match = { ip = "192.168.3.1/32", protocol = "udp", fport = 9000 } }]
"#;

/// On a switch NI with the apps' addresses configured (so enforced from the start), app1
/// sends app2's live flow's datagrams (app2's address and ports): the address check
/// stops them, and behind it the conntrack entry belongs to app2's port anyway.
#[test]
fn a_conntrack_entry_serves_only_the_port_that_made_it() {
    let config = SWITCH.replacen("network = \"@ni1\"\n", "network = \"@ni1\"\nip = \"192.168.3.10\"\n", 1).replacen(
        "network = \"@ni1\"\nacl",
        "network = \"@ni1\"\nip = \"192.168.3.11\"\nacl",
        1,
    );
    assert!(config.contains("ip = \"192.168.3.10\"") && config.contains("ip = \"192.168.3.11\""), "{config}");
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 4, &config);
    s.start_agent();
    let (app1, app2, gw) = (s.app("app1").to_string(), s.app("app2").to_string(), s.gw.clone());
    for (ns, dev, ip) in [(&app1, "nbu1x1.1", "192.168.3.10/24"), (&app2, "nbu1x2.1", "192.168.3.11/24")] {
        assert!(s.exec(ns, &["ip", "addr", "add", ip, "dev", dev]).status.success());
    }
    let secs = scaled(Duration::from_secs(5)).as_secs().to_string();
    let c = counter(&s, &gw, &["udp", &secs, "", "192.168.3.1", "9000"]);
    // app2's flow 192.168.3.11:41000 -> 192.168.3.1:9000, allowed by its ACL.
    let code = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('192.168.3.11', 41000))\ns.sendto(b'legit', ('192.168.3.1', 9000))";
    assert!(s.python(&app2, code, &[]).status.success());
    let dropped = |s: &Scenario| s.counter("drop_spoofed") + s.counter("drop_ct_port");
    let before = dropped(&s);
    let sent = attack(&s, &app1, &["same-tuple", "nbu1x1.1", "192.168.3.11", "192.168.3.1", "41000", "9000", "10"]);
    let total = arrived(c);
    let after = dropped(&s);
    let through = total.saturating_sub(1);
    report("app1 rides app2's flow (same tuple, app1's MAC)", sent, through, "drop_spoofed + drop_ct_port", before, after);
    assert_eq!(total, 1, "only app2's own datagram arrived");
    assert!(after >= before + sent);
}

/// A switch NI's app is known by the address the DHCP server behind the uplink gives it:
/// before its lease it sends nothing but DHCP (an address it picked itself gets
/// nowhere), after it only from the leased address.
#[test]
fn a_switch_ni_learns_the_apps_address_from_dhcp() {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 4, SWITCH);
    let (app2, gw) = (s.app("app2").to_string(), s.gw.clone());
    // app2's default MAC (02:16:3e:<NI index>:<app number>:<interface>) has a reservation.
    let leases = std::env::temp_dir().join(format!("netns-agent-test-{}-gw.leases", s.id));
    s.spawn(
        &gw,
        &[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=up3",
            "--bind-interfaces",
            "--dhcp-range=192.168.3.100,192.168.3.150,255.255.255.0,1h",
            "--dhcp-host=02:16:3e:01:02:01,192.168.3.21",
            &format!("--dhcp-leasefile={}", leases.display()),
            "--pid-file",
        ],
    );
    s.start_agent();
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    let send = "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind((sys.argv[1], 0))\nfor i in range(5): s.sendto(b'hello', ('192.168.3.1', 9000))";
    let sends_from = |s: &Scenario, ip: &str| {
        let c = counter(s, &gw, &["udp", &secs, "hello", "192.168.3.1", "9000"]);
        assert!(s.python(&app2, send, &[ip]).status.success());
        arrived(c)
    };
    // Before any lease: an address app2 gave itself.
    assert!(s.exec(&app2, &["ip", "addr", "add", "192.168.3.21/24", "dev", "nbu1x2.1"]).status.success());
    let before = s.counter("drop_spoofed");
    let early = sends_from(&s, "192.168.3.21");
    let after = s.counter("drop_spoofed");
    report("app2 sends before its lease (self-assigned 192.168.3.21)", 5, early, "drop_spoofed", before, after);
    assert_eq!(early, 0);
    // Its ARP requests for the gateway (naming 192.168.3.21) already go nowhere.
    assert!(after > before);
    assert!(s.exec(&app2, &["ip", "addr", "flush", "dev", "nbu1x2.1"]).status.success());
    // The lease: busybox's DHCP client, which puts the address on the interface.
    let script = std::env::temp_dir().join(format!("netns-agent-test-{}-udhcpc.sh", s.id));
    std::fs::write(&script, "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nip addr add \"$ip/$mask\" dev \"$interface\"\n").unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&script).status().unwrap();
    let out = s
        .exec(&app2, &["busybox", "udhcpc", "-i", "nbu1x2.1", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", &script.display().to_string()]);
    let _ = std::fs::remove_file(&script);
    let _ = std::fs::remove_file(&leases);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("lease of 192.168.3.21"), "udhcpc: {text}\n{}", s.agent_log());
    assert_eq!(sends_from(&s, "192.168.3.21"), 5, "from the leased address");
    // Another address after the lease.
    assert!(s.exec(&app2, &["ip", "addr", "add", "192.168.3.30/24", "dev", "nbu1x2.1"]).status.success());
    let before = s.counter("drop_spoofed");
    let other = sends_from(&s, "192.168.3.30");
    let after = s.counter("drop_spoofed");
    report("app2 sends from an address not leased to it", 5, other, "drop_spoofed", before, after);
    assert_eq!(other, 0);
}

/// An app whose ACL allows `0.0.0.0/0` reaches the world, not the device: listeners on
/// the uplink's address and on the NI's agent-side veth address (in the agent's netns),
/// and on its NI's gateway (in the NI's netns, where a VPN NI's charon listens; before,
/// the ACEs decided there), get nothing from it. The NI's own services on the gateway
/// (DNS here) and a ping of it stay. The device's port maps stay reachable by hairpin
/// (nat tests).
#[test]
fn apps_cannot_reach_the_device_itself() {
    let config = LOCAL.replacen(
        "acl = [\n  { id = 1, match = { ip = \"10.99.0.10/32\", protocol = \"tcp\", fport = 7000 } },\n  { id = 2, match = { ip = \"10.99.0.10/32\", protocol = \"udp\", fport = 9001 } },\n]",
        "acl = [{ id = 1, match = { ip = \"0.0.0.0/0\" } }]",
        1,
    );
    assert_ne!(config, LOCAL);
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, &config);
    s.start_agent();
    let (app1, zedbox, inet, ni) = (s.app("app1").to_string(), s.zedbox.clone(), s.inet.clone(), s.ni("ni1").to_string());
    s.whoami_server(&inet, INET_IP, 7000);
    let targets = ["192.168.0.2", "169.254.100.1", "10.10.1.1"];
    for ip in &targets[..2] {
        s.whoami_server(&zedbox, ip, 7777);
    }
    s.whoami_server(&ni, "10.10.1.1", 7777);
    assert!(s.whoami(&app1, INET_IP, 7000).is_some(), "0.0.0.0/0 reaches the world");
    let before = s.counter("drop_acl");
    let mut through = 0;
    for ip in targets {
        for _ in 0..3 {
            through += u64::from(s.whoami(&app1, ip, 7777).is_some());
        }
    }
    let after = s.counter("drop_acl");
    report("app1 (ACE 0.0.0.0/0) -> listeners on the uplink, veth and gateway addresses", 9, through, "drop_acl", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + 9);
    assert!(s.exec(&app1, &["ping", "-c1", "-W2", "10.10.1.1"]).status.success(), "a ping of the gateway, which the ACE allows");
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "app2"), Some(vec!["10.10.1.3".to_string()]), "the NI's DNS on the gateway");
}

fn flood(s: &Scenario, ns: &str, args: &[&str]) -> u64 {
    let script = py_script("floods.py");
    let mut full = vec!["python3", &script[..]];
    full.extend_from_slice(args);
    let out = s.exec(ns, &full);
    assert!(out.status.success(), "flood failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Denied tuples leave records of their own (bounded), never conntrack entries: 500k of
/// them from one app evict nothing, and a neighbour's idle allowed flow goes on.
#[test]
fn a_flood_of_denied_tuples_evicts_no_live_flow() {
    let s = local();
    let (app1, app2) = (s.app("app1").to_string(), s.app("app2").to_string());
    let session = s.push_session(&app1, 7000);
    std::thread::sleep(scaled(Duration::from_secs(2)));
    let before = (s.counter("drop_acl"), s.counter("ct_new"));
    let n = load_size(500_000).to_string();
    let sent = flood(&s, &app2, &["udp-tuples", "10.10.1.3", INET_IP, &n]);
    let after = (s.counter("drop_acl"), s.counter("ct_new"));
    let records = s.flows().len();
    println!(
        "app2 sends {sent} denied tuples: drop_acl {} -> {}, ct_new {} -> {}, flow records {records}",
        before.0, after.0, before.1, after.1
    );
    assert!(after.0 >= before.0 + sent, "every denied tuple judged and dropped");
    assert!(after.1 < before.1 + 10, "denied tuples made no conntrack entries");
    assert!(records <= 16384 + 100, "drop records stay bounded: {records}");
    session.assert_survived("app1's idle flow, the server speaking after the flood");
}

/// One app's flood of new flows (UDP to its gateway's DNS port, which every app may
/// reach, from every source port) fills its own part of its NI's conntrack share (half:
/// the NI has two apps) and, the NI now holding half its share, is refused there
/// (`drop_port_full`); its neighbour still opens connections. (Before each port had a part, the flood took the NI's whole share
/// and the neighbour's connections were refused, `drop_zone_full`.)
#[test]
fn one_apps_flood_of_new_flows_leaves_its_neighbour_room() {
    let mut s = local();
    let (app1, app2, inet) = (s.app("app1").to_string(), s.app("app2").to_string(), s.inet.clone());
    s.whoami_server(&inet, INET_IP, 7000);
    let counters = ["drop_port_full", "drop_zone_full"];
    let before = counters.map(|c| s.counter(c));
    let n = load_size(64_000);
    let sent = flood(&s, &app2, &["udp-tuples", "10.10.1.3", "10.10.1.1", &n.to_string(), "53"]);
    let reached = (0..3).filter(|_| s.whoami(&app1, INET_IP, 7000).is_some()).count();
    let after = counters.map(|c| s.counter(c));
    println!(
        "app2 opens {sent} flows to 10.10.1.1:53, then app1 connects 3 times: {reached} reached; drop_port_full {} -> {}, drop_zone_full {} -> {}",
        before[0], after[0], before[1], after[1]
    );
    assert_eq!(reached, 3, "app1 still opens connections");
    assert_eq!(after[1], before[1], "no flow was refused for the NI's share");
    if n == 64_000 {
        // 57,344 flows for the NI, 28,672 for each of its two apps; a burst on both CPUs
        // may overshoot a little.
        let refused = after[0] - before[0];
        assert!(refused > sent - 28_672 - 500, "app2's flows past its part were refused: {refused}");
    }
}

/// Two NIs on eth0: app1's port map (tcp 8080 -> 80) and app2's flows to the internet.
const TWO_NIS: &str = r##"
[[uplink]]
name = "eth0"

[[network]]
name = "@ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[network]]
name = "@ni2"
kind = "local"
subnet = "10.10.2.0/24"
gateway = "10.10.2.1"
uplink = "eth0"

[[app]]
name = "app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.2"
acl = [{ id = 1, match = { protocol = "tcp", lport = 8080 }, action = { portmap = 80 } }]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni2"
ip = "10.10.2.2"
acl = [{ id = 1, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7000 } }]
"##;

/// A SYN flood from outside at one NI's port map fills that NI's share of the conntrack
/// and NAT maps and is refused there; another NI's idle flow keeps its entries.
#[test]
fn a_syn_flood_at_a_port_map_leaves_other_nis_alone() {
    let mut s = Scenario::with_uplinks(&["ni1", "ni2"], &["app1", "app2"], 1, TWO_NIS);
    s.start_agent();
    let (app2, gw) = (s.app("app2").to_string(), s.gw.clone());
    let session = s.push_session(&app2, 7000);
    std::thread::sleep(scaled(Duration::from_secs(2)));
    let before = (s.counter("portmap_new"), s.counter("drop_zone_full"));
    // Sources in the internet host's /16 (the SYN-ACKs go nowhere else).
    let n = load_size(100_000).to_string();
    let sent = flood(&s, &gw, &["syn-flood", "10.99.0.0", "192.168.0.2", "8080", &n]);
    let after = (s.counter("portmap_new"), s.counter("drop_zone_full"));
    println!("{sent} SYNs at ni1's port map: portmap_new {} -> {}, drop_zone_full {} -> {}", before.0, after.0, before.1, after.1);
    assert!(load_size(100_000) < 100_000 || after.1 > before.1, "the flood ran into ni1's share");
    session.assert_survived("app2's idle flow in ni2, the server speaking after the flood");
}

/// A blind RST from outside (the server's address and port, a sequence number far from
/// the server's) is dropped; the flow, idle for 15 s after it, goes on.
#[test]
fn an_out_of_window_rst_closes_nothing() {
    let s = local();
    let (app1, gw) = (s.app("app1").to_string(), s.gw.clone());
    let script = py_script("floods.py");
    let secs = scaled(Duration::from_secs(10)).as_secs().to_string();
    let mut sniff = s.background(&gw, &["python3", "-u", &script, "first-seq", "inet0", INET_IP, "7000", &secs]);
    assert_eq!(sniff.read_line().trim(), "ready");
    let session = s.push_session(&app1, 7000);
    let end: u64 = sniff.read_line().trim().parse().expect("the server's first segment was seen");
    let flow = s.flows().into_iter().find(|f| f.dport == 7000 && f.verdict == Verdict::Allow).expect("app1's flow is on record");
    let translated = flow.translated.last().expect("translated").clone();
    let port = translated.rsplit(':').next().unwrap();
    let before = s.counter("drop_tcp_rst");
    let mut sent = 0;
    for seq in [end + (1 << 31), end + (1 << 21), end + (1 << 32) - (1 << 21)] {
        sent += flood(&s, &gw, &["rst", INET_IP, "7000", "192.168.0.2", port, &seq.to_string(), "3"]);
    }
    let after = s.counter("drop_tcp_rst");
    println!("{sent} out-of-window RSTs to {translated}: drop_tcp_rst {before} -> {after}");
    assert!(after >= before + sent, "every blind RST dropped");
    // The server's second line comes 15 s after the RSTs: an entry they had closed
    // (10 s) would be gone, and the line dropped on its way in.
    std::thread::sleep(Duration::from_secs(15));
    session.assert_survived("the flow, the server speaking 15 s after the RSTs");
}

/// A connection the client dropped silently (no FIN, no RST) leaves its entry
/// established; the client connects again from the same port, and the far end settles
/// it as the kernel's conntrack lets it (`ct::FLAG_SYN_AGAIN`):
/// - **refuse** (the server dropped its end silently too, and stopped listening): its
///   RST refusing the new SYN (sequence number 0: it answers a segment without ACK) is
///   far from the dead connection's sequence numbers, yet reaches the app at once.
///   (Dropped, the app's connect hung until its SYNs gave up, about 2 minutes.)
/// - **take** (the server dropped its end and listens): the new connection rides the
///   entry, which follows its sequence numbers, so the server's RST ending it later
///   reaches the app too. The old connection carried 64 MiB from the server: its end
///   lies past the new connection's first number (Linux numbers a tuple's connections
///   by the clock, 64 ns a step: 4 s to catch up, a margin an emulated VM's transfer
///   may eat, where the case still passes but no longer tells), and checked against
///   it, the RST was dropped.
/// - **keep** (the server still holds the old connection): its challenge ACK draws the
///   client's RST at the old connection's number, which closes the old connection there
///   and the entry, and the SYN sent again opens a new flow. The client sends its new
///   SYN half a second on, its number 8M past the old one's: taken for the flow's, it
///   put that RST out of the window, and it was dropped.
///
/// The three again, the client's connection half closed before it was dropped (its FIN
/// seen and acknowledged: the entry in FIN_WAIT, the server's end in CLOSE_WAIT). In
/// **keep**, that SYN started a new flow (as a SYN reopens a closed one), whose number
/// put the client's RST to the old connection out of the window: dropped, and the
/// connect hung. It now waits for the far end's answer as on an established flow.
///
/// Not one RST dropped in all six; the blind RSTs of
/// `an_out_of_window_rst_closes_nothing` still are.
#[test]
fn a_reconnect_over_a_silently_dead_flow_is_settled_by_the_far_end() {
    let mut s = local();
    let app1 = s.app("app1").to_string();
    let script = py_script("reconnect.py");
    let files = s.scratch_dir("reconnect");
    // Long enough for the SYN's retries to outlast it when an RST is dropped (1, 2, 4 s).
    let timeout = scaled(Duration::from_secs(10)).as_secs().to_string();
    let cases = [
        ("refuse", "40123", "0", "refused"),
        ("take", "40124", "67108864", "echoed reset"),
        ("keep", "40125", "0", "echoed closed"),
        ("refuse", "40126", "0", "refused"),
        ("take", "40127", "67108864", "echoed reset"),
        ("keep", "40128", "0", "echoed closed"),
    ];
    for (i, (how, sport, bulk, expected)) in cases.into_iter().enumerate() {
        let half = if i >= 3 { "half" } else { "whole" };
        let (go, again) = (files.join(format!("{how}-{half}-go")), files.join(format!("{how}-{half}-again")));
        let mut server = s.background(&s.inet, &["python3", "-u", &script, "server", INET_IP, "7000", go.to_str().unwrap(), how, bulk]);
        assert_eq!(server.read_line().trim(), "ready", "{how}: the server did not start");
        let client_args = ["python3", "-u", &script, "client", INET_IP, "7000", sport, again.to_str().unwrap(), &timeout, bulk, half];
        let mut client = s.background(&app1, &client_args);
        assert_eq!(client.read_line().trim(), "forgot", "{how}: the client's first connection");
        std::fs::write(&go, "").unwrap();
        let before = s.counter("drop_tcp_rst");
        std::fs::write(&again, "").unwrap();
        let outcome = client.read_line();
        let server_said = server.read_line();
        let after = s.counter("drop_tcp_rst");
        println!("{how} ({half} connection): reconnect from port {sport}: {}; drop_tcp_rst {before} -> {after}", outcome.trim());
        assert_eq!(
            outcome.trim(),
            expected,
            "{how} ({half}): the app's new connection (drop_tcp_rst {before} -> {after})\n{}",
            s.agent_log()
        );
        assert_eq!(server_said.trim(), "done", "{how} ({half}): the server");
        assert_eq!(after, before, "{how} ({half}): no RST dropped");
    }
}

/// The NI's services know an app by the port its request came through, not by the address
/// it claims: a request that carries app2's address but did not come through app2's port
/// (sent from inside the NI's netns, past every app port) gets no user data and no DNS.
#[test]
fn services_know_apps_by_their_port_not_their_address() {
    let s = local();
    let ni = s.ni("ni1").to_string();
    assert!(s.exec(&ni, &["ip", "addr", "add", "10.10.1.3/32", "dev", "lo"]).status.success());
    let out = s.exec(
        &ni,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "--interface",
            "10.10.1.3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://10.10.1.1/user-data",
        ],
    );
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    let ask = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.bind(("10.10.1.3", 0))
s.sendto(struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x04app1\x00" + struct.pack("!HH", 1, 1), ("10.10.1.1", 53))
r = s.recv(512)
print(r[3] & 0x0f)
"#;
    let rcode = String::from_utf8_lossy(&s.python(&ni, ask, &[]).stdout).trim().to_string();
    assert!(s.exec(&ni, &["ip", "addr", "del", "10.10.1.3/32", "dev", "lo"]).status.success());
    println!("as 10.10.1.3 without app2's port: metadata HTTP {code}, DNS rcode {rcode}");
    assert_eq!(code, "404", "no user data for an address alone");
    assert_eq!(rcode, "5", "REFUSED");
    // app2 itself, through its port, is served.
    let out = s.exec(s.app("app2"), &["curl", "-s", "--max-time", "3", "http://169.254.169.254/user-data"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("app2-secret"), "app2's own user data");
    assert_eq!(s.dns_a(s.app("app2"), "10.10.1.1", "app1").unwrap(), ["10.10.1.2"]);
}

/// The MAC of `iface` in netns `ns`.
fn mac_of(s: &Scenario, ns: &str, iface: &str) -> String {
    let out = s.exec(ns, &["cat", &format!("/sys/class/net/{iface}/address")]);
    assert!(out.status.success(), "no {iface} in {ns}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// No VLANs on app ports: an 802.1Q frame from an app (the kernel takes the tag out of the
/// frame's bytes before the programs see it) is dropped, not carried tagged out of the
/// uplink into a VLAN of its network; a priority tag alone (VLAN id 0) is no VLAN.
#[test]
fn vlan_tagged_frames_from_an_app_go_nowhere() {
    let s = local();
    let (app1, gw) = (s.app("app1").to_string(), s.gw.clone());
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    // To a destination app1 may reach (UDP 9001), tagged: counted on gw's side of eth0.
    let c = counter(&s, &gw, &["frames", &secs, "evil vlan", "up0"]);
    let before = s.counter("drop_non_ipv4");
    let sent = attack(&s, &app1, &["vlan", "nbu1x1.1", "100", INET_IP, "9001", "20"]);
    let through = arrived(c);
    let after = s.counter("drop_non_ipv4");
    report("app1 sends in VLAN 100", sent, through, "drop_non_ipv4", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent);
    // A priority tag (802.1p: VLAN id 0) is the untagged network's: those frames arrive.
    let inet = s.inet.clone();
    let c = counter(&s, &inet, &["udp", &secs, "evil vlan", INET_IP, "9001"]);
    let sent = attack(&s, &app1, &["vlan", "nbu1x1.1", "0", INET_IP, "9001", "20"]);
    let arrived = arrived(c);
    report("app1 sends priority-tagged frames (VLAN id 0)", sent, arrived, "drop_non_ipv4", after, s.counter("drop_non_ipv4"));
    assert_eq!(arrived, sent);
}

/// A packet whose IP header claims more bytes than its frame holds is malformed: dropped
/// and counted, never judged (it would add bytes it does not carry to its flow's count).
#[test]
fn a_packet_longer_than_its_frame_is_dropped_as_malformed() {
    let s = local();
    let app1 = s.app("app1").to_string();
    let before = (s.counter("drop_malformed"), s.counter("ct_new"));
    let sent = attack(&s, &app1, &["long", "nbu1x1.1", INET_IP, "9001", "10"]);
    let after = (s.counter("drop_malformed"), s.counter("ct_new"));
    report("app1 sends 60-byte frames claiming 65,535 bytes", sent, 0, "drop_malformed", before.0, after.0);
    assert!(after.0 >= before.0 + sent, "{before:?} -> {after:?}");
    assert_eq!(after.1, before.1, "no flow made of them");
}

/// A frame for a neighbour's MAC carrying a packet for a remote (one the sender's ACL
/// allows) is not handed to the neighbour: else two apps whose ACLs keep them apart would
/// have a channel (the neighbour reads it with a packet socket, and answers the same way).
#[test]
fn a_frame_to_a_neighbours_mac_for_another_address_is_not_delivered() {
    let s = local();
    let (app1, app2) = (s.app("app1").to_string(), s.app("app2").to_string());
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    let app2_mac = mac_of(&s, &app2, "nbu1x2.1");
    let c = counter(&s, &app2, &["frames", &secs, "evil to mac", "nbu1x2.1"]);
    let before = s.counter("drop_not_for_app");
    let sent = attack(&s, &app1, &["to-mac", "nbu1x1.1", &app2_mac, "10.10.1.2", INET_IP, "9001", "20"]);
    let through = arrived(c);
    let after = s.counter("drop_not_for_app");
    report("app1 -> app2's MAC, a packet for the internet host", sent, through, "drop_not_for_app", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent);
}

/// A host on the uplink's network cannot pose as the device: a packet from an address of
/// the NI veths' network (169.254.100.0/24, the agent's own end of NI1's veth here, which
/// the app ports take for EVE) is dropped at the uplink, never routed into the NI.
#[test]
fn packets_from_outside_claiming_an_inside_address_are_dropped_at_the_uplink() {
    let s = local();
    let (app1, gw, zedbox) = (s.app("app1").to_string(), s.gw.clone(), s.zedbox.clone());
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
    let eth0_mac = mac_of(&s, &zedbox, "eth0");
    let c = counter(&s, &app1, &["udp", &secs, "evil to mac", "10.10.1.2", "6000"]);
    let before = s.counter("drop_uplink_spoof");
    let sent = attack(&s, &gw, &["to-mac", "up0", &eth0_mac, "169.254.100.1", "10.10.1.2", "6000", "20"]);
    // And to the NI's end of the veth (what listens in the NI's netns).
    let to_ni_end = attack(&s, &gw, &["to-mac", "up0", &eth0_mac, "192.168.0.1", "169.254.100.2", "6000", "20"]);
    let through = arrived(c);
    let after = s.counter("drop_uplink_spoof");
    report("gw -> app1 as 169.254.100.1, and to 169.254.100.2", sent + to_ni_end, through, "drop_uplink_spoof", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + sent + to_ni_end);
}

/// An app with two interfaces on one NI is known by each: the metadata server serves its
/// user data to both of its addresses (it kept one per app, and told the other "not an
/// app of this network").
#[test]
fn an_app_with_two_interfaces_on_one_ni_gets_its_data_on_both() {
    let second = "[[app.interface]]\nnetwork = \"@ni1\"\nip = \"10.10.1.4\"\n";
    let config = format!("{LOCAL}{second}");
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, &config);
    s.start_agent();
    let app2 = s.app("app2").to_string();
    // Each address leaves by its own interface (else the port of the other drops it as
    // spoofed), and answers ARP only there.
    for args in [
        ["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"].as_slice(),
        &["ip", "rule", "add", "from", "10.10.1.4", "table", "100"],
        &["ip", "route", "add", "default", "via", "10.10.1.1", "dev", "nbu2x2.1", "table", "100"],
        &["ip", "route", "add", "10.10.1.0/24", "dev", "nbu2x2.1", "src", "10.10.1.4", "table", "100"],
    ] {
        let out = s.exec(&app2, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for ip in ["10.10.1.3", "10.10.1.4"] {
        let out = s.exec(&app2, &["curl", "-sS", "--max-time", "5", "--interface", ip, "http://169.254.169.254/user-data"]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(
            body.contains("app2-secret"),
            "app2's user data from {ip}: {body}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.agent_log()
        );
    }
}
