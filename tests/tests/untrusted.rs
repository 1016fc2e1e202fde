//! Apps are untrusted: each test sends an attack from a real app netns (scapy frames on
//! the app's own interface), counts what arrived where it was aimed, and names the
//! counter that saw it. What must get through: nothing. Legitimate traffic still flows.

use std::time::Duration;

use netns_tests::{py_script, scaled, Background, Scenario, INET_IP};

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
    String::from_utf8_lossy(&out.stdout).lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| {
        panic!("counter output: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
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

#[test]
fn icmp_errors_cannot_carry_data_past_the_acl() {
    let s = local();
    let (app1, inet, gw) = (s.app("app1").to_string(), s.inet.clone(), s.gw.clone());
    // app1's allowed UDP flow 40000 -> inet:9001 is live.
    let code = "import socket,sys\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('10.10.1.2', 40000))\ns.sendto(b'hello', (sys.argv[1], 9001))";
    let c = counter(&s, &inet, &["udp", "3", "hello", INET_IP, "9001"]);
    assert!(s.python(&app1, code, &[INET_IP]).status.success());
    assert_eq!(arrived(c), 1, "the allowed flow works");
    // Errors quoting it, sent to the router (192.168.0.1), which app1's ACL does not allow.
    let secs = scaled(Duration::from_secs(4)).as_secs().to_string();
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

#[test]
fn a_conntrack_entry_serves_only_the_port_that_made_it() {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 4, SWITCH);
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
    let before = s.counter("drop_ct_port");
    let sent = attack(&s, &app1, &["same-tuple", "nbu1x1.1", "192.168.3.11", "192.168.3.1", "41000", "9000", "10"]);
    let total = arrived(c);
    let after = s.counter("drop_ct_port");
    let through = total.saturating_sub(1);
    report("app1 rides app2's flow (same tuple, app1's MAC)", sent, through, "drop_ct_port", before, after);
    assert_eq!(total, 1, "only app2's own datagram arrived");
    assert!(after >= before + sent);
}

/// An app whose ACL allows `0.0.0.0/0` reaches the world, not the device: listeners on
/// the uplink's address and on the NI's agent-side veth address (in the agent's netns)
/// get nothing from it. The device's port maps stay reachable by hairpin (nat tests).
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
    let (app1, zedbox, inet) = (s.app("app1").to_string(), s.zedbox.clone(), s.inet.clone());
    s.whoami_server(&inet, INET_IP, 7000);
    let targets = ["192.168.0.2", "169.254.100.1"];
    for ip in targets {
        s.whoami_server(&zedbox, ip, 7777);
    }
    assert!(s.whoami(&app1, INET_IP, 7000).is_some(), "0.0.0.0/0 reaches the world");
    let before = s.counter("drop_acl");
    let mut through = 0;
    for ip in targets {
        for _ in 0..3 {
            through += u64::from(s.whoami(&app1, ip, 7777).is_some());
        }
    }
    let after = s.counter("drop_acl");
    report("app1 (ACE 0.0.0.0/0) -> listeners on the uplink and veth addresses", 6, through, "drop_acl", before, after);
    assert_eq!(through, 0);
    assert!(after >= before + 6);
}
