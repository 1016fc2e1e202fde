//! The NI services: the DNS proxy feeding host ACLs (no race, TTL expiry), its log, and its
//! robustness against bad DNS.

use netns_agent::services::dns::{Rcode, LOG_BURST_PER_APP, LOG_LINES_PER_SEC_PER_APP};
use netns_tests::{Background, EchoResult, Scenario, INET_IP};
use serde_json::Value;

/// app1 may reach github.com and its subdomains, nothing else. Upstream DNS: the mock in
/// the internet host.
const HOSTS: &str = r#"
[[uplink]]
name = "eth0"
dns = ["10.99.0.53"]

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
acl = [{ id = 1, match = { host = "github.com" } }]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.3"
acl = [{ id = 1, match = { host = "example.org" } }]
"#;

/// A mock upstream: github.com 10.99.0.10, api.github.com 10.99.0.11, ttl1.github.com
/// 10.99.0.12 (TTL 1), google.com 10.98.0.10, and every *.race.github.com a fresh address in
/// 10.99.2.0/23; anything else NXDOMAIN. big.github.com has 60 addresses (10.99.3.1-60):
/// over UDP the answer is truncated (TC, no records), over TCP it comes whole.
const MOCK_DNS: &str = include_str!("../py/mock_upstream_dns.py");

fn scenario(agent_keys: &[&str]) -> Scenario {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, HOSTS);
    for k in agent_keys {
        s.set_agent_key(k);
    }
    let (inet, gw) = (s.inet.clone(), s.gw.clone());
    for args in [
        ["ip", "addr", "add", "10.99.0.11/24", "dev", "wan0"].as_slice(),
        &["ip", "addr", "add", "10.99.0.12/24", "dev", "wan0"],
        &["ip", "addr", "add", "10.99.0.53/24", "dev", "wan0"],
        &["ip", "addr", "add", "10.99.0.66/24", "dev", "wan0"],
        &["ip", "addr", "add", "10.98.0.10/24", "dev", "wan0"],
        // Every address of 10.99.2.0/23 is the internet host's (the race test's fresh ones).
        &["ip", "route", "add", "local", "10.99.2.0/23", "dev", "lo"],
    ] {
        assert!(s.exec(&inet, args).status.success(), "{args:?}");
    }
    for args in [["ip", "addr", "add", "10.98.0.1/24", "dev", "inet0"].as_slice(), &["ip", "route", "add", "10.99.2.0/23", "via", INET_IP]]
    {
        assert!(s.exec(&gw, args).status.success(), "{args:?}");
    }
    s.spawn(&inet, &["python3", "-c", MOCK_DNS]);
    s.whoami_server(&inet, "0.0.0.0", 80);
    s.start_agent();
    s
}

#[test]
fn host_acl_allows_the_domain_and_its_subdomains_only() {
    let s = scenario(&[]);
    let app1 = s.app("app1");
    // Before any lookup, github.com's address is not allowed.
    assert!(s.whoami(app1, "10.99.0.10", 80).is_none());
    assert_eq!(s.dns_a(app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    assert!(s.whoami(app1, "10.99.0.10", 80).is_some(), "allowed after the answer");
    assert_eq!(s.dns_a(app1, "10.10.1.1", "api.github.com").unwrap(), ["10.99.0.11"]);
    assert!(s.whoami(app1, "10.99.0.11", 80).is_some(), "subdomain allowed");
    // Read now: a closed flow's entry goes 10 s after it closed, which the rest of the
    // test may take in the emulated VM.
    let flows = s.flows();
    assert!(flows.iter().any(|f| f.dst == "10.99.0.11" && f.mark == "0x01400001"), "{flows:#?}");
    assert_eq!(s.dns_a(app1, "10.10.1.1", "google.com").unwrap(), ["10.98.0.10"]);
    assert!(s.whoami(app1, "10.98.0.10", 80).is_none(), "an unlisted name stays blocked");
    // The host set is per app port: app2 (example.org) gets nothing from app1's lookups.
    assert!(s.whoami(s.app("app2"), "10.99.0.10", 80).is_none());
    let flows = s.flows();
    assert!(flows.iter().any(|f| f.dst == "10.98.0.10" && f.mark == "0x01bfffff"), "{flows:#?}");
    // The request log, as EVE keeps it.
    let log = s.dns_log();
    let e = log.iter().find(|e| e.name == "api.github.com").expect("logged");
    assert_eq!((e.app.as_str(), e.answers.first().map(String::as_str), e.source.as_str()), ("app1", Some("10.99.0.11"), "upstream"));
}

/// 200 rounds of: resolve a fresh name, connect at once. Prints the failures.
const RACE: &str = include_str!("../py/dns_race.py");

#[test]
fn no_race_between_the_answer_and_the_first_connection() {
    let s = scenario(&[]);
    let out = s.python(s.app("app1"), RACE, &["10.10.1.1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "every first connection after its answer succeeds");
}

/// Opens a connection, waits past TTL + grace, then tries a new one and uses the old one.
const EXPIRY: &str = include_str!("../py/dns_expiry.py");

#[test]
fn expired_answers_leave_the_host_set_but_established_flows_live_on() {
    let mut s = scenario(&["dns_host_grace_secs = 1"]);
    let inet = s.inet.clone();
    s.echo_server(&inet, "10.99.0.12", 7);
    let app1 = s.app("app1").to_string();
    let mut script = Background::ready(&app1, &["python3", "-c", EXPIRY, "10.99.0.12"]);
    let answer = s.dns_a(&app1, "10.10.1.1", "ttl1.github.com");
    // Go (or, with no answer, the script fails its first connection and ends).
    script.go();
    let out = script.finish();
    assert_eq!(answer.unwrap(), ["10.99.0.12"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["first"], "before");
    assert_eq!(r["new"], "blocked", "TTL 1 s + grace 1 s later, a new connection is blocked: {r}");
    assert_eq!(r["later"], "after", "the established connection keeps its conntrack entry: {r}");
}

#[test]
fn malformed_dns_and_floods_do_not_break_the_proxy() {
    let s = scenario(&[]);
    let app1 = s.app("app1");
    // Garbage, a truncated header, a header claiming 65535 questions, a compression loop.
    let garbage = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for p in [b"\xff" * 7, b"\x12\x34\x01\x00\x00\x01", b"\x12\x34\x01\x00\xff\xff\x00\x00\x00\x00\x00\x00",
          b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"]:
    s.sendto(p, ("10.10.1.1", 53))
answers = 0
for _ in range(4):
    try:
        r = s.recv(512); answers += 1
        assert r[3] & 0x0f == 1, "FORMERR"
    except socket.timeout:
        pass
print(answers)
"#;
    let out = s.python(app1, garbage, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // app2's request, on record before the flood.
    assert_eq!(s.dns_a(s.app("app2"), "10.10.1.1", "app2").unwrap(), ["10.10.1.3"]);
    let flood_started = std::time::Instant::now();
    // A flood of 10,000 queries from app1 is answered or shed...
    let flood = r#"
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x06github\x03com\x00" + struct.pack("!HH", 1, 1)
for i in range(10000):
    try: s.sendto(q, ("10.10.1.1", 53))
    except BlockingIOError: pass
# Questions the proxy answers itself (app2's name), one at a time: each is logged or counted.
s.setblocking(True); s.settimeout(1)
q = struct.pack("!HHHHHH", 8, 0x0100, 1, 0, 0, 0) + b"\x04app2\x00" + struct.pack("!HH", 1, 1)
answered = 0
for i in range(2000):
    s.sendto(q, ("10.10.1.1", 53))
    while True:
        try:
            if s.recv(512)[:2] == q[:2]:
                answered += 1
                break
        except socket.timeout: break
print(answered)
"#;
    let out = s.python(app1, flood, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answered: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // ...while app2 still gets its answers at once.
    assert_eq!(s.dns_a(s.app("app2"), "10.10.1.1", "app1").unwrap(), ["10.10.1.2"]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(s.dns_a(app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    assert_eq!(s.echo(app1, "10.10.1.1", 9, 1, None), EchoResult::TimedOut, "nothing else on the gateway");
    // The request log holds app1's flood within its rate, its last line counting what
    // went unlogged, and app2's history as it was.
    let secs = flood_started.elapsed().as_secs() + 1;
    let log = s.dns_log();
    let app1_lines: Vec<_> = log.iter().filter(|e| e.app == "app1" && ["github.com", "app2"].contains(&e.name.as_str())).collect();
    let unlogged: u64 = app1_lines.iter().map(|e| e.unlogged_before).sum();
    eprintln!("app1's flood: {} lines logged, {unlogged} requests counted unlogged, in {secs} s", app1_lines.len());
    assert!(app1_lines.len() as u64 <= LOG_BURST_PER_APP + LOG_LINES_PER_SEC_PER_APP * secs, "{} lines", app1_lines.len());
    assert!(unlogged + app1_lines.len() as u64 >= answered, "app1's lines count each of the {answered} answers it got");
    assert!(log.iter().any(|e| e.app == "app2" && e.name == "app2"), "app2's earlier request is on record");
}

/// app1 gets an allocated address from the pool, app2 a fixed one with its own MAC; both
/// ask for it with a real DHCP client.
const DHCP: &str = r#"
[[network]]
name = "@ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
dhcp_range = ["10.10.1.50", "10.10.1.150"]

[[app]]
name = "app1"
netns = "@app1"
[[app.interface]]
network = "@ni1"
dhcp = true
acl = [{ id = 1, match = { ip = "10.10.1.0/24" } }]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.77"
mac = "02:aa:bb:cc:dd:ee"
dhcp = true
acl = [{ id = 1, match = { ip = "10.10.1.0/24" } }]
"#;

/// Runs busybox udhcpc once on `ifname` in `ns`; returns the leased address.
fn dhcp_lease(s: &Scenario, ns: &str, ifname: &str) -> Option<String> {
    let out = s.exec(ns, &["busybox", "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", "/bin/true"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines().find_map(|l| l.split("lease of ").nth(1)).and_then(|rest| rest.split_whitespace().next()).map(String::from)
}

#[test]
fn dhcp_leases_match_the_agents_allocation() {
    let mut s = Scenario::new(&["ni1"], &["app1", "app2"], DHCP);
    s.start_agent();
    assert_eq!(dhcp_lease(&s, s.app("app1"), "nbu1x1.1").as_deref(), Some("10.10.1.50"), "first address of the pool:\n{}", s.agent_log());
    assert_eq!(dhcp_lease(&s, s.app("app2"), "nbu1x2.1").as_deref(), Some("10.10.1.77"), "the configured address");
    let mac = s.exec(s.app("app2"), &["cat", "/sys/class/net/nbu1x2.1/address"]);
    assert_eq!(String::from_utf8_lossy(&mac.stdout).trim(), "02:aa:bb:cc:dd:ee");
    // The DHCP exchange passes by the implicit rule and is recorded (ACE id 6). Clients
    // without an address share one tuple (0.0.0.0:68 -> :67): the entry is the latest
    // sender's, app2's here.
    assert!(s.flows().iter().any(|f| f.dport == 67 && f.mark == "0x02000006"), "{:#?}", s.flows());
    // dnsmasq is supervised: killed, it comes back.
    let pid = |s: &Scenario| {
        let out = std::process::Command::new("pgrep").args(["-f", &format!("dnsmasq-{}.conf", s.ni("ni1"))]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = pid(&s);
    assert!(!first.is_empty(), "dnsmasq runs");
    std::process::Command::new("kill").arg(&first).status().unwrap();
    let back = netns_tests::wait_until(std::time::Duration::from_secs(10), || {
        let p = pid(&s);
        !p.is_empty() && p != first
    });
    assert!(back.is_some(), "dnsmasq restarted:\n{}", s.agent_log());
    assert_eq!(dhcp_lease(&s, s.app("app1"), "nbu1x1.1").as_deref(), Some("10.10.1.50"));
    // Stopping the agent stops its dnsmasq.
    s.stop_agent();
    assert!(pid(&s).is_empty(), "dnsmasq stopped with the agent");
}

#[test]
fn malformed_upstream_answers_get_servfail_and_insert_nothing() {
    let s = scenario(&[]);
    let app1 = s.app("app1");
    for name in ["trunc.github.com", "loop.github.com", "counts.github.com"] {
        // SERVFAIL: an answer without addresses.
        assert_eq!(s.dns_a(app1, "10.10.1.1", name).as_deref(), Some(&[][..]), "{name}");
    }
    assert!(s.whoami(app1, "10.99.0.66", 80).is_none(), "nothing of the broken answers entered the host set");
    // The proxy goes on serving, over UDP and TCP.
    assert_eq!(s.dns_a(app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    let tcp = r#"
import socket, struct, sys
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x04app2\x00" + struct.pack("!HH", 1, 1)
c = socket.create_connection(("10.10.1.1", 53), timeout=3)
c.sendall(struct.pack("!H", len(q)) + q)
n, = struct.unpack("!H", c.recv(2))
r = b""
while len(r) < n: r += c.recv(n - len(r))
print(socket.inet_ntoa(r[-4:]))
"#;
    let out = s.python(app1, tcp, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.10.1.3", "DNS over TCP: {}", String::from_utf8_lossy(&out.stderr));
    let log = s.dns_log();
    assert!(log.iter().any(|e| e.name == "loop.github.com" && e.rcode == Rcode::ServFail), "{log:#?}");
}

/// Asks 10.10.1.1 for big.github.com from app1 over UDP (truncated) and then over TCP,
/// which the proxy forwards over TCP: all 60 records arrive.
#[test]
fn tcp_queries_are_forwarded_over_tcp() {
    let s = scenario(&[]);
    let ask = r#"
import socket, struct, sys
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x03big\x06github\x03com\x00" + struct.pack("!HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
u.sendto(q, ("10.10.1.1", 53))
r = u.recv(65535)
tc, udp_answers = bool(r[2] & 0x02), struct.unpack("!H", r[6:8])[0]
t = socket.create_connection(("10.10.1.1", 53), timeout=5)
t.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", t.recv(2))[0]
a = b""
while len(a) < n:
    a += t.recv(n - len(a))
print(tc, udp_answers, struct.unpack("!H", a[:2])[0] == 0x4242, struct.unpack("!H", a[6:8])[0])
"#;
    let out = s.python(s.app("app1"), ask, &[]);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("big.github.com over UDP (truncated?, answers) then over TCP (id kept?, answers): {line}");
    assert_eq!(line, "True 0 True 60", "{}", String::from_utf8_lossy(&out.stderr));
}

/// 64 TCP connections to argv[1]:argv[2], each sent the bytes argv[3] (hex) and then
/// nothing; prints "held", then how many the server closed within a second, then how
/// many it closed within argv[4] seconds.
const HOLD_SLOW: &str = r#"
import socket, sys, time
conns = []
for _ in range(64):
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    c.sendall(bytes.fromhex(sys.argv[3]))
    conns.append(c)
print("held", flush=True)
def closed(c):
    c.setblocking(False)
    try:
        return c.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
time.sleep(1)
print(sum(closed(c) for c in conns), flush=True)
deadline = time.time() + float(sys.argv[4])
while time.time() < deadline and not all(closed(c) for c in conns):
    time.sleep(0.5)
print(sum(closed(c) for c in conns), flush=True)
"#;

/// `HOLD_SLOW` from app1 to `addr`:`port` (sending `hex`), with the time to wait for
/// the held connections to close; returns it once it holds them.
fn hold_slow(s: &Scenario, addr: &str, port: u16, hex: &str) -> Background {
    let wait = netns_tests::scaled(std::time::Duration::from_secs(20)).as_secs().to_string();
    let mut holder = s.background(s.app("app1"), &["python3", "-u", "-c", HOLD_SLOW, addr, &port.to_string(), hex, &wait]);
    assert_eq!(holder.read_line().trim(), "held");
    holder
}

/// How many of `HOLD_SLOW`'s connections the server closed at once, and in the end.
fn closed_slow(holder: &mut Background) -> (u32, u32) {
    let at_once = holder.read_line().trim().parse().unwrap_or(0);
    (at_once, holder.read_line().trim().parse().unwrap_or(0))
}

/// One app opening 64 TCP connections to the proxy and sending two bytes on each holds
/// its own share (8), not the NI's; the others are closed at once and the held ones
/// after the read timeout; app2's TCP queries are answered meanwhile.
#[test]
fn a_slow_tcp_dns_client_holds_only_its_own_share() {
    let s = scenario(&[]);
    let mut holder = hold_slow(&s, "10.10.1.1", 53, "ffff");

    let ask_tcp = r#"
import socket, struct
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x04app1\x00" + struct.pack("!HH", 1, 1)
ok = 0
for _ in range(5):
    t = socket.create_connection(("10.10.1.1", 53), timeout=5)
    t.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", t.recv(2))[0]
    ok += len(t.recv(n)) == n
print(ok)
"#;
    let out = s.python(s.app("app2"), ask_tcp, &[]);
    let answered = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (closed_at_once, closed_later) = closed_slow(&mut holder);
    println!("app1 holds 64 slow TCP connections: {closed_at_once} closed at once, {closed_later} after the read timeout; app2's TCP queries answered: {answered}/5");
    assert_eq!(answered, "5", "app2 is served over TCP while app1 dawdles: {}", String::from_utf8_lossy(&out.stderr));
    assert!(closed_at_once >= 56, "app1 holds at most its share (8)");
    assert_eq!(closed_later, 64, "the held ones are closed after the read timeout");
}

/// The metadata server alike: app1 opens 64 connections and sends each a request's
/// first line, never its end. It holds its share (8) of the server's connections, the
/// others are closed at once, the held ones when their request's head is overdue; app2
/// gets its metadata meanwhile.
#[test]
fn a_slow_metadata_client_holds_only_its_own_share() {
    let s = scenario(&[]);
    let mut holder = hold_slow(&s, "169.254.169.254", 80, &"GET / HTTP/1.1\r\n".bytes().map(|b| format!("{b:02x}")).collect::<String>());
    let served = (0..5)
        .filter(|_| {
            let out = s.exec(s.app("app2"), &["curl", "-sS", "--max-time", "5", "http://169.254.169.254/eve/v1/hostname"]);
            String::from_utf8_lossy(&out.stdout) == "app2"
        })
        .count();
    let (closed_at_once, closed_later) = closed_slow(&mut holder);
    println!("app1 holds 64 slow metadata connections: {closed_at_once} closed at once, {closed_later} later; app2 served {served}/5");
    assert_eq!(served, 5, "app2 gets its metadata while app1 dawdles");
    assert!(closed_at_once >= 56, "app1 holds at most its share (8)");
    assert_eq!(closed_later, 64, "the held ones are closed once their request's head is overdue");
}

/// A TCP connection to the proxy opened under one ACL and asked on under the next: the
/// answer's addresses go into the host set by the host ACEs of the moment. (Taken from
/// the connection's start, github.com's address would go in under the bit that was
/// github.com's ACE and is now example.org's: allowed by an ACE that names no such host.)
#[test]
fn a_held_dns_connection_asks_under_the_acl_of_the_moment() {
    let s = scenario(&[]);
    let ask = r#"
import socket, struct, sys
t = socket.create_connection(("10.10.1.1", 53), timeout=5)
print("ready", flush=True)
sys.stdin.readline()
q = struct.pack("!HHHHHH", 5, 0x0100, 1, 0, 0, 0) + b"\x06github\x03com\x00" + struct.pack("!HH", 1, 1)
t.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", t.recv(2))[0]
a = b""
while len(a) < n:
    a += t.recv(n - len(a))
print(struct.unpack("!H", a[6:8])[0])
"#;
    let app1 = s.app("app1").to_string();
    let mut held = Background::ready(&app1, &["python3", "-c", ask]);
    // app1's one host ACE now names example.org (the ACE github.com's was, by place).
    let changed = HOSTS.replacen(r#"match = { host = "github.com" }"#, r#"match = { host = "example.org" }"#, 1);
    let out = s.apply(&changed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    held.go();
    let out = held.finish();
    // (The mock answers every TCP question with big.github.com's 60 addresses.)
    let answers = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(answers, "60", "github.com answered over the held connection: {}", String::from_utf8_lossy(&out.stderr));
    assert!(s.whoami(&app1, "10.99.3.1", 80).is_none(), "github.com is no host of app1's ACL now");
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    assert!(s.whoami(&app1, "10.99.0.10", 80).is_none(), "nor over a new question");
}

/// An answer that comes while the app's ACL changes goes into its host set as the ACL
/// live at that moment numbers its host ACEs. The proxies numbered them by their own copy
/// of the plan, which follows an apply: an answer for google.com written between the
/// switch and that copy's update took google.com's old number, which the new ACL gives
/// github.com, and google.com's address was allowed by github.com's ACE (for the answer's
/// TTL, up to a day). app1 asks google.com without pause while its ACL drops google.com's
/// ACE, five times over.
#[test]
fn an_answer_racing_an_acl_change_opens_no_address_to_another_ace() {
    let s = scenario(&[]);
    let github = r#"{ id = 1, match = { host = "github.com" } }"#;
    let both = HOSTS.replacen(github, r#"{ id = 2, match = { host = "google.com" } }, { id = 1, match = { host = "github.com" } }"#, 1);
    let ask = r#"
import select, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
print("ready", flush=True)
sent = answered = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    sent += 1
    s.sendto(struct.pack("!HHHHHH", sent & 0xffff, 0x0100, 1, 0, 0, 0) + b"\x06google\x03com\x00" + struct.pack("!HH", 1, 1), ("10.10.1.1", 53))
    try:
        s.recv(512); answered += 1
    except socket.timeout:
        pass
print(sent, answered)
"#;
    let app1 = s.app("app1").to_string();
    for round in 1..=5 {
        let out = s.apply(&both);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let asking = Background::ready(&app1, &["python3", "-c", ask]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        // github.com's ACE takes google.com's place: the first host ACE.
        let out = s.apply(HOSTS);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(std::time::Duration::from_millis(200));
        let out = asking.finish();
        let counts = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!("round {round}: google.com asked, answered: {counts}");
        assert!(s.whoami(&app1, "10.98.0.10", 80).is_none(), "round {round}: google.com's address is allowed by no ACE now");
    }
    // Where an ACE names it, google.com's address is reachable.
    let out = s.apply(&both);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "google.com").unwrap(), ["10.98.0.10"]);
    assert!(s.whoami(&app1, "10.98.0.10", 80).is_some(), "google.com's ACE allows it");
}

/// `HOSTS` with app1's ACL a host ACE that drops google.com, then its github.com one: an
/// address of github.com under the first host ACE's bit is dropped.
fn google_dropped_then_github() -> String {
    HOSTS.replacen(
        r#"{ id = 1, match = { host = "github.com" } }"#,
        r#"{ id = 2, match = { host = "google.com" }, action = "drop" }, { id = 1, match = { host = "github.com" } }"#,
        1,
    )
}

/// A flow that a host ACE allowed lives through ACL changes that move the ACE (github.com's
/// becomes the first host ACE when google.com's goes, and the second again when it comes
/// back, before it), and so after the agent restarted: its packets are judged again under each new
/// ACL, by host sets that must say github.com under whichever ACL the port names at that
/// moment. (They were rewritten to the new ACL's bits only after the port had switched:
/// a packet judged in between was dropped, and the flow with it.)
#[test]
fn a_flow_of_a_host_ace_lives_through_changes_that_move_the_ace() {
    let mut s = scenario(&[]);
    let inet = s.inet.clone();
    s.echo_server(&inet, "0.0.0.0", 7007);
    let both = google_dropped_then_github();
    let out = s.apply(&both);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let app1 = s.app("app1").to_string();
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    // A session to github.com while github.com's ACE moves.
    let moved = |s: &Scenario, round: usize, config: &str| {
        let session = s.echo_session(&app1, "10.99.0.10", 7007, "0");
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = s.apply(config);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // Long enough for a session whose packets the port drops to time out (3 s).
        std::thread::sleep(std::time::Duration::from_millis(500));
        let r = session.stop();
        eprintln!("round {round}: {r}; rejudged {}", s.counter("rejudged"));
        assert!(r["error"].is_null() && r["sent"] == r["echoed"] && r["sent"].as_u64() > Some(0), "round {round}: the session lived: {r}");
    };
    for round in 1..=6 {
        moved(&s, round, if round % 2 == 1 { HOSTS } else { &both });
    }
    // The agent restarted over the data path learns where github.com's bits are (not on
    // the first host ACE's).
    s.stop_agent();
    s.start_agent();
    moved(&s, 7, HOSTS);
}

/// A host ACE that comes to name another domain in its place is another ACE: the flows it
/// allowed are judged again. (The ACL's digest left out the domains: the changed ACL
/// looked like the live one, and a session to github.com lived on under an ACE that names
/// example.org.)
#[test]
fn a_host_ace_that_names_another_domain_judges_its_flows_again() {
    let mut s = scenario(&[]);
    let inet = s.inet.clone();
    s.echo_server(&inet, "0.0.0.0", 7007);
    let app1 = s.app("app1").to_string();
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "github.com").unwrap(), ["10.99.0.10"]);
    let session = s.echo_session(&app1, "10.99.0.10", 7007, "0.01");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let rejudged = s.counter("rejudged");
    let renamed = HOSTS.replacen(r#"match = { host = "github.com" }"#, r#"match = { host = "example.org" }"#, 1);
    let out = s.apply(&renamed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let r = session.stop();
    assert!(!r["error"].is_null(), "the session to github.com ended: {r}");
    assert!(s.counter("rejudged") > rejudged, "judged again");
}

/// An agent that starts over a running data path answers DNS before its first apply has
/// gone through the ports: those answers go into the host sets under the live ACL's bits,
/// as the record and the maps tell them (here not the first ACL's: github.com's host ACE
/// is on bit 2), not under none, which would leave the app's next connection blocked.
#[test]
fn answers_while_the_agent_starts_go_in_under_the_live_acl() {
    let mut s = scenario(&[]);
    let both = google_dropped_then_github();
    let out = s.apply(&both);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.kill_agent();
    // Asks until the first answer, then no more.
    let ask = r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.02)
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x06github\x03com\x00" + struct.pack("!HH", 1, 1)
print("ready", flush=True)
for i in range(1500):
    s.sendto(q, ("10.10.1.1", 53))
    try:
        print(len(s.recv(512)), i)
        break
    except socket.timeout:
        pass
"#;
    let app1 = s.app("app1").to_string();
    let asking = Background::ready(&app1, &["python3", "-c", ask]);
    s.start_agent();
    let out = asking.finish();
    eprintln!("answer (bytes, attempt): {}", String::from_utf8_lossy(&out.stdout).trim());
    assert!(!out.stdout.is_empty(), "answered: {}", String::from_utf8_lossy(&out.stderr));
    assert!(s.whoami(&app1, "10.99.0.10", 80).is_some(), "github.com's ACE allows the address the answer gave");
}

/// A DNS UPDATE (or any opcode but QUERY) is answered NOTIMP by the proxy and never
/// reaches the uplink's resolver, which might take it.
#[test]
fn a_dns_update_is_refused_and_never_forwarded() {
    let s = scenario(&[]);
    let update = r#"
import socket, struct
# UPDATE (opcode 5) of zone github.com: one zone (SOA), one update adding x.github.com A.
zone = b"\x06github\x03com\x00" + struct.pack("!HH", 6, 1)
rr = b"\x01x\x06github\x03com\x00" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([6, 6, 6, 6])
q = struct.pack("!HHHHHH", 0x7777, 5 << 11, 1, 0, 1, 0) + zone + rr
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
s.sendto(q, ("10.10.1.1", 53))
r = s.recv(512)
print(struct.unpack("!H", r[:2])[0] == 0x7777, (r[2] >> 3) & 0x0f, r[3] & 0x0f)
"#;
    let out = s.python(s.app("app1"), update, &[]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True 5 4", "NOTIMP for the UPDATE: {}", String::from_utf8_lossy(&out.stderr));
    let log = s.dns_log();
    assert!(log.iter().any(|e| e.name == "github.com" && e.source == "not a query, not forwarded"), "{log:#?}");
}
