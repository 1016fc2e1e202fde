//! Every flow on record: the flow log holds one record per flow event (start, dropped,
//! interim, end) from the data path's ring buffer and the agent's sweep, and one per DNS
//! request; it rotates by size, and `flows --follow` streams the same records live.
//! Every counter scrapeable: `/metrics` moves by exactly the traffic sent.

use std::time::Duration;

use netns_agent::{
    flowlog::{Action, DnsRecord, EndReason, FlowLogRecord, LogRecord, RecordKind},
    services::dns::Rcode,
};
use netns_tests::{load_size, metric, scaled, wait_until, Background, Scenario, INET_IP};
use serde_json::Value;

/// app1 may reach the internet host's TCP 7000 (ACE 1) and UDP 7002 (ACE 2), and app2
/// (ACE 3, both ways); everything else is dropped.
const LOCAL: &str = r##"
[[uplink]]
name = "eth0"

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
  { id = 1, name = "echo", match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7000 } },
  { id = 2, name = "udp-echo", match = { ip = "10.99.0.10/32", protocol = "udp", fport = 7002 } },
  { id = 3, name = "neighbours", match = { eidset = true } },
]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni1"
ip = "10.10.1.3"
acl = [{ id = 1, match = { eidset = true } }]
"##;

fn scenario(agent_keys: &[&str]) -> (Scenario, std::path::PathBuf) {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, LOCAL);
    let log = s.state_dir.join("flows.jsonl");
    s.set_agent_key(&format!("flow_log = {:?}", log.display().to_string()));
    for k in agent_keys {
        s.set_agent_key(k);
    }
    s.start_agent();
    let inet = s.inet.clone();
    s.echo_server(&inet, INET_IP, 7000);
    (s, log)
}

/// Every record in the log and its rotated files.
fn records(log: &std::path::Path) -> Vec<LogRecord> {
    let mut files: Vec<std::path::PathBuf> = (1..=3).rev().map(|i| std::path::PathBuf::from(format!("{}.{i}", log.display()))).collect();
    files.push(log.to_path_buf());
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().map(|l| serde_json::from_str::<LogRecord>(l).expect("a record per line")).collect::<Vec<_>>())
        .collect()
}

/// The flow records among `records`.
fn flows(records: &[LogRecord]) -> impl Iterator<Item = &FlowLogRecord> {
    records.iter().filter_map(|r| match r {
        LogRecord::Flow(f) => Some(f),
        LogRecord::Dns(_) => None,
    })
}

fn count(records: &[LogRecord], kind: RecordKind, dport: u16) -> usize {
    flows(records).filter(|r| r.kind == kind && r.dport == dport).count()
}

/// 500 short TCP connections (100 bytes each way) and 200 denied attempts (a tenth per
/// time-scale unit in the VM): exactly that many allowed flows end on record with their
/// ACE and at least their payload counted, and exactly that many dropped flows, each with
/// the default-drop rule.
#[test]
fn short_connections_and_denied_attempts_are_all_on_record() {
    let (s, log) = scenario(&[]);
    let (conns, denied) = (load_size(500), load_size(200));
    let client = r#"
import socket, sys
ok = 0
for i in range(int(sys.argv[2])):
    c = socket.create_connection((sys.argv[1], 7000), timeout=5)
    c.sendall(b"x" * 100)
    got = b""
    while len(got) < 100:
        got += c.recv(100 - len(got))
    ok += got == b"x" * 100
    c.close()
for i in range(int(sys.argv[3])):
    d = socket.socket(); d.setblocking(False)
    d.connect_ex((sys.argv[1], 7001))
    d.close()
print(ok)
"#;
    let out = s.python(s.app("app1"), client, &[INET_IP, &conns.to_string(), &denied.to_string()]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), conns.to_string(), "{}", String::from_utf8_lossy(&out.stderr));
    // The ends come as both sides close, the drops last of all (the agent reads events in
    // batches): a wait for both, not a timed check.
    wait_until(scaled(Duration::from_secs(30)), || {
        let all = records(&log);
        count(&all, RecordKind::End, 7000) >= conns as usize && count(&all, RecordKind::Dropped, 7001) >= denied as usize
    });
    let all = records(&log);
    let ends: Vec<&FlowLogRecord> = flows(&all).filter(|r| r.kind == RecordKind::End && r.dport == 7000).collect();
    let dropped: Vec<&FlowLogRecord> = flows(&all).filter(|r| r.kind == RecordKind::Dropped && r.dport == 7001).collect();
    println!(
        "flow log: {} starts, {} ends, {} dropped (of {conns} connections and {denied} denied attempts); event_lost {}",
        count(&all, RecordKind::Start, 7000),
        ends.len(),
        dropped.len(),
        s.counter("event_lost")
    );
    assert_eq!(count(&all, RecordKind::Start, 7000), conns as usize);
    assert_eq!(ends.len(), conns as usize);
    assert_eq!(dropped.len(), denied as usize);
    for r in &ends {
        assert_eq!((r.acl_id, r.action, r.app.as_str()), (1, Action::Accept, "app1"), "{r:?}");
        assert_eq!(r.end_reason, Some(EndReason::Closed), "{r:?}");
        // The payload plus at least the headers of SYN, data and FIN each way.
        assert!(r.tx_bytes >= 100 + 3 * 40 && r.rx_bytes >= 100 + 3 * 40, "{r:?}");
        assert!(r.tx_packets >= 4 && !r.inbound, "{r:?}");
    }
    for r in &dropped {
        assert_eq!((r.acl_id, r.action, r.drop_reason.as_deref()), (0x3f_ffff, Action::Drop, Some("drop_acl")), "{r:?}");
    }
    assert_eq!(s.counter("event_lost"), 0);
}

/// Every unconfigured DHCP client of an NI asks on one tuple (0.0.0.0:68 to the
/// broadcast's port 67): when app2 asks after app1, app1's flow ends on record
/// (replaced, with its one packet) and app2's starts, under its own app. (Before, app2
/// took app1's entry over in place: no end for app1, no start for app2, and app2's
/// packets went on record as app1's.)
#[test]
fn two_apps_asking_for_a_lease_on_the_one_dhcp_tuple_are_two_flows_on_record() {
    let (s, log) = scenario(&[]);
    let script = netns_tests::py_script("attacks.py");
    for (app, port, ip) in [("app1", "nbu1x1.1", "10.10.1.2"), ("app2", "nbu1x2.1", "10.10.1.3")] {
        let ns = s.app(app).to_string();
        let mac = s.link_mac(&ns, port);
        // scapy is Debian's (python3-scapy), for Debian's python.
        let out = s.exec(&ns, &["/usr/bin/python3", &script, "dhcp-as", port, &mac, "discover", ip, "1"]);
        assert!(out.status.success(), "{app}'s DISCOVER: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dhcp = |kind: RecordKind, app: &str| {
        flows(&records(&log))
            .filter(|r| r.dport == 67 && r.kind == kind && r.app == app)
            .map(|r| (r.end_reason, r.tx_packets))
            .collect::<Vec<_>>()
    };
    wait_until(scaled(Duration::from_secs(30)), || {
        !dhcp(RecordKind::Start, "app2").is_empty() && !dhcp(RecordKind::End, "app1").is_empty()
    });
    let (app1_start, app1_end, app2_start) =
        (dhcp(RecordKind::Start, "app1"), dhcp(RecordKind::End, "app1"), dhcp(RecordKind::Start, "app2"));
    println!("DHCP records: app1 starts {app1_start:?}, ends {app1_end:?}; app2 starts {app2_start:?}");
    assert_eq!(app1_start.len(), 1, "app1's flow started on record");
    assert_eq!(app1_end, [(Some(EndReason::Replaced), 1)], "app1's flow ended when app2 took the tuple, with its one packet");
    assert_eq!(app2_start.len(), 1, "app2's flow started on record, as app2's");
}

/// A client drops its connection silently and connects again from the same port; the
/// server, which dropped its end too, takes the new connection (reconnect.py's `take`):
/// on record that is two flows on one tuple, the first ending (replaced, with the
/// megabyte it carried) when the server's SYN-ACK takes the entry over, the second
/// starting there and ending on the server's RST. (Before, the new connection went on
/// record as the old flow, with the old one's bytes.)
#[test]
fn a_connection_opened_again_on_its_tuple_is_a_new_flow_on_record() {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1", "app2"], 1, LOCAL);
    let log = s.state_dir.join("flows.jsonl");
    s.set_agent_key(&format!("flow_log = {:?}", log.display().to_string()));
    s.start_agent();
    let app1 = s.app("app1").to_string();
    let script = netns_tests::py_script("reconnect.py");
    let files = s.scratch_dir("reconnect");
    let (go, again) = (files.join("go"), files.join("again"));
    let (sport, bulk) = ("40124", "1048576");
    let timeout = scaled(Duration::from_secs(10)).as_secs().to_string();
    let mut server = s.background(&s.inet, &["python3", "-u", &script, "server", INET_IP, "7000", go.to_str().unwrap(), "take", bulk]);
    assert_eq!(server.read_line().trim(), "ready", "the server did not start");
    let mut client = s
        .background(&app1, &["python3", "-u", &script, "client", INET_IP, "7000", sport, again.to_str().unwrap(), &timeout, bulk, "whole"]);
    assert_eq!(client.read_line().trim(), "forgot", "the client's first connection");
    std::fs::write(&go, "").unwrap();
    std::fs::write(&again, "").unwrap();
    assert_eq!(client.read_line().trim(), "echoed reset", "the client's new connection");
    assert_eq!(server.read_line().trim(), "done");
    let on_tuple = |kind: RecordKind| {
        flows(&records(&log))
            .filter(|r| r.kind == kind && r.dport == 7000 && r.sport == 40124)
            .map(|r| (r.end_reason, r.rx_bytes))
            .collect::<Vec<_>>()
    };
    wait_until(scaled(Duration::from_secs(30)), || on_tuple(RecordKind::End).len() >= 2);
    let (starts, ends) = (on_tuple(RecordKind::Start), on_tuple(RecordKind::End));
    println!("records on the tuple: starts {starts:?}, ends (reason, bytes received) {ends:?}");
    assert_eq!(starts.len(), 2, "two flows started on record");
    assert_eq!(ends.len(), 2, "two flows ended on record: {ends:?}");
    assert_eq!(ends[0].0, Some(EndReason::Replaced), "the first, when the new connection took the tuple");
    assert!(ends[0].1 >= 1 << 20, "the first carried the megabyte: {ends:?}");
    assert_eq!(ends[1].0, Some(EndReason::Closed), "the second, on the server's RST");
    assert!(ends[1].1 < 1 << 16, "the second carried one echoed line, not the first one's bytes: {ends:?}");
}

/// A flow alive for three interim intervals gets interim records, then one end record;
/// the counters only grow and the end has what the client sent.
#[test]
fn long_flows_get_interim_records_and_one_end() {
    let (s, log) = scenario(&["flow_interim_secs = 2"]);
    let script = netns_tests::py_script("echo_session.py");
    // A line a second for 40 s: the sweep (every 10 s, on the next 1 s tick: 11-12 s
    // apart) reports it at least three times.
    let session = s.background(s.app("app1"), &["python3", &script, INET_IP, "7000", "40", "1"]);
    let out = session.finish();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["error"], Value::Null, "{result}");
    wait_until(scaled(Duration::from_secs(20)), || count(&records(&log), RecordKind::End, 7000) >= 1);
    let all = records(&log);
    let interim: Vec<&FlowLogRecord> = flows(&all).filter(|r| r.kind == RecordKind::Interim && r.dport == 7000).collect();
    let ends: Vec<&FlowLogRecord> = flows(&all).filter(|r| r.kind == RecordKind::End && r.dport == 7000).collect();
    println!("a 40 s flow: {} interim records, {} end; sent {} lines", interim.len(), ends.len(), result["sent"]);
    assert!(interim.len() >= 3, "{interim:?}");
    assert_eq!(ends.len(), 1);
    let mut last = 0;
    for r in interim.iter().chain(ends.iter()) {
        let tx = r.tx_bytes;
        assert!(tx >= last, "counters only grow: {r:?}");
        last = tx;
    }
    let lines = result["sent"].as_u64().unwrap();
    // Each line is "line N\n" (7-9 bytes) in its own segment.
    assert!(last >= lines * (40 + 7), "the end record has at least what the client sent: {last} for {lines} lines");
}

/// The log rotates at its size bound under a flood of records; `flows --follow` streams
/// the same records live.
#[test]
fn the_log_rotates_and_follow_streams_live() {
    let (s, log) = scenario(&["flow_log_max_bytes = 4096"]);
    let config = s.config_path.display().to_string();
    let agent = netns_tests::agent_bin().display().to_string();
    let mut follow: Background = s.background(&s.zedbox, &[&agent, "flows", "--follow", "--json", "--config", &config]);
    // Connected once the agent has it (a record made before would not reach it).
    std::thread::sleep(scaled(Duration::from_secs(1)));
    let flood = r#"
import socket, sys
for i in range(300):
    d = socket.socket(); d.setblocking(False)
    d.connect_ex((sys.argv[1], 7001))
    d.close()
"#;
    assert!(s.python(s.app("app1"), flood, &[INET_IP]).status.success());
    // The flood's records stream live; others may come first (the bridge's own IGMP
    // reports to the apps, say).
    let flood_record = |r: &LogRecord| matches!(r, LogRecord::Flow(f) if f.dport == 7001);
    let first = std::iter::from_fn(|| Some(follow.read_line()))
        .take_while(|line| !line.is_empty())
        .take(100)
        .map(|line| serde_json::from_str::<LogRecord>(&line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .find(flood_record)
        .expect("a record of the flood from --follow");
    assert!(matches!(&first, LogRecord::Flow(f) if f.kind == RecordKind::Dropped), "{first:?}");
    wait_until(scaled(Duration::from_secs(10)), || count(&records(&log), RecordKind::Dropped, 7001) >= 300);
    let sizes: Vec<u64> = std::iter::once(log.clone())
        .chain((1..=4).map(|i| std::path::PathBuf::from(format!("{}.{i}", log.display()))))
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    println!("300 dropped flows with a 4096-byte bound: file sizes {sizes:?}");
    assert!(sizes[..4].iter().all(|n| *n <= 4096), "{sizes:?}");
    assert_eq!(sizes[4], 0, "three old files kept, no more");
    assert!(sizes[3] > 0, "rotated three times at least");
}

/// A record's tuple as "src:sport -> dst:dport".
fn tuple(r: &FlowLogRecord) -> String {
    format!("{}:{} -> {}:{}", r.src, r.sport, r.dst, r.dport)
}

/// Records carry the ACE's name, the app's translated end and the DNS name the remote was
/// resolved from; DNS requests are records of their own.
#[test]
fn records_name_the_ace_the_translation_and_the_dns_name() {
    let (mut s, log) = scenario(&[]);
    let (app1, app2) = (s.app("app1").to_string(), s.app("app2").to_string());
    s.echo_server(&app2, "10.10.1.3", 7000);
    // app1 asks the NI's DNS proxy for app2's name, then talks to it and to the internet.
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "app2"), Some(vec!["10.10.1.3".to_string()]));
    assert!(matches!(s.echo(&app1, "10.10.1.3", 7000, 100, None), netns_tests::EchoResult::Echoed(100)));
    assert!(matches!(s.echo(&app1, INET_IP, 7000, 100, None), netns_tests::EchoResult::Echoed(100)));
    wait_until(scaled(Duration::from_secs(30)), || count(&records(&log), RecordKind::End, 7000) >= 2);
    let all = records(&log);
    let dns: Vec<&DnsRecord> = all
        .iter()
        .filter_map(|r| match r {
            LogRecord::Dns(d) => Some(d),
            LogRecord::Flow(_) => None,
        })
        .collect();
    println!("DNS records: {dns:?}");
    assert_eq!(dns.len(), 1, "one request, one record");
    let q = &dns[0].request;
    assert_eq!((q.name.as_str(), q.app.as_str(), q.rcode), ("app2", "app1", Rcode::NoError));
    assert_eq!(q.answers, ["10.10.1.3"]);
    let end_to = |dst: &str| {
        flows(&all)
            .find(|r| r.kind == RecordKind::End && r.dst.to_string() == dst && r.dport == 7000)
            .unwrap_or_else(|| panic!("no end record to {dst}"))
    };
    let to_app2 = end_to("10.10.1.3");
    let to_inet = end_to(INET_IP);
    println!("to app2: {} {to_app2:?}\nto inet: {} {to_inet:?}", tuple(to_app2), tuple(to_inet));
    assert_eq!((to_app2.acl_id, to_app2.acl_name.as_deref()), (3, Some("neighbours")));
    assert_eq!(to_app2.dns_name.as_deref(), Some("app2"), "the name app1 resolved");
    assert!(to_app2.translated.is_none(), "no NAT between two apps of one NI");
    assert_eq!((to_inet.acl_id, to_inet.acl_name.as_deref()), (1, Some("echo")));
    assert!(to_inet.dns_name.is_none(), "never resolved through the proxy");
    let translated = to_inet.translated.expect("the uplink's translation").to_string();
    assert!(translated.starts_with("192.168.0.2:"), "the uplink's address: {translated}");
    // The start record comes before the translation exists; the end names it.
    assert!(flows(&all).any(|r| r.kind == RecordKind::Start && r.dst.to_string() == INET_IP && r.dport == 7000));
}

/// `/metrics` scraped before and after a known amount of traffic moves by exactly that;
/// promtool accepts the exposition.
#[test]
fn metrics_move_by_exactly_the_traffic_sent() {
    let (s, _log) = scenario(&["metrics = \"127.0.0.1:9464\""]);
    let (app1, inet) = (s.app("app1").to_string(), s.inet.clone());
    let script = netns_tests::py_script("udp_echo.py");
    let idle = scaled(Duration::from_secs(30)).as_secs().to_string();
    let mut server = s.background(&inet, &["python3", "-u", &script, "server", INET_IP, "7002", &idle]);
    assert_eq!(server.read_line().trim(), "ready");
    // One exchange first: ARP and the flow's entry are settled before the count starts.
    let echo = |n: &str| s.exec(&app1, &["python3", &script, "client", INET_IP, "7002", "96", n]);
    assert_eq!(String::from_utf8_lossy(&echo("1").stdout).trim(), "1");
    // No ARP in the counted window, however slow the machine: both neighbours pinned.
    s.pin_neighbour(&app1, "10.10.1.1");
    s.pin_neighbour(s.ni("ni1"), "10.10.1.2");
    let port = [("app", "app1"), ("verdict", "pass")];
    let before = s.scrape_metrics();
    let (n, size) = (20u64, 96u64);
    assert_eq!(String::from_utf8_lossy(&echo(&n.to_string()).stdout).trim(), n.to_string());
    // Five denied connection attempts (their SYNs).
    let denied = "import socket, sys\nfor i in range(5):\n    d = socket.socket(); d.setblocking(False); d.connect_ex((sys.argv[1], 7001)); d.close()";
    assert!(s.python(&app1, denied, &[INET_IP]).status.success());
    assert_eq!(s.dns_a(&app1, "10.10.1.1", "app2"), Some(vec!["10.10.1.3".to_string()]));
    let after = s.scrape_metrics();
    let delta = |name: &str, labels: &[(&str, &str)]| metric(&after, name, labels) - metric(&before, name, labels);
    let frame = (14 + 20 + 8 + size) as f64;
    let from_app: Vec<(&str, &str)> = port.iter().copied().chain([("direction", "from_app")]).collect();
    let to_app: Vec<(&str, &str)> = port.iter().copied().chain([("direction", "to_app")]).collect();
    println!(
        "after {n} echoes of {size} bytes: from_app {} packets / {} bytes, to_app {} / {}; drops acl {}; dns {}",
        delta("netns_agent_port_packets_total", &from_app),
        delta("netns_agent_port_bytes_total", &from_app),
        delta("netns_agent_port_packets_total", &to_app),
        delta("netns_agent_port_bytes_total", &to_app),
        delta("netns_agent_datapath_drops_total", &[("reason", "acl")]),
        delta("netns_agent_dns_queries_total", &[("rcode", "NoError"), ("source", "local")]),
    );
    // Whole frames: the echoes, and the DNS query for "app2" (64 bytes) and its answer
    // (one A record more: 80 bytes).
    assert_eq!(delta("netns_agent_port_packets_total", &from_app), (n + 1) as f64, "the echoes and the DNS query");
    assert_eq!(delta("netns_agent_port_packets_total", &to_app), (n + 1) as f64, "the echoes and the DNS answer");
    assert_eq!(delta("netns_agent_port_bytes_total", &from_app), n as f64 * frame + 64.0);
    assert_eq!(delta("netns_agent_port_bytes_total", &to_app), n as f64 * frame + 80.0);
    // Dropped from app1: the five SYNs, and whatever IPv6 its kernel sent meanwhile.
    let dropped = delta("netns_agent_port_packets_total", &[("app", "app1"), ("verdict", "drop"), ("direction", "from_app")]);
    let ipv6 = delta("netns_agent_datapath_drops_total", &[("reason", "non_ipv4")]);
    assert!(dropped >= 5.0 && dropped <= 5.0 + ipv6, "the denied SYNs: {dropped} dropped, {ipv6} of them (at most) IPv6");
    assert_eq!(delta("netns_agent_datapath_drops_total", &[("reason", "acl")]), 5.0);
    // The per-ACE figures come from the flow events, which the agent reads a moment later.
    let default_drop = [("app", "app1"), ("ace", "4194303")];
    let drops_before = metric(&before, "netns_agent_ace_flows_total", &default_drop);
    wait_until(scaled(Duration::from_secs(10)), || {
        metric(&s.scrape_metrics(), "netns_agent_ace_flows_total", &default_drop) >= drops_before + 5.0
    });
    assert_eq!(
        metric(&s.scrape_metrics(), "netns_agent_ace_flows_total", &default_drop) - drops_before,
        5.0,
        "default drop: one flow per SYN"
    );
    assert_eq!(delta("netns_agent_dns_queries_total", &[("rcode", "NoError"), ("source", "local")]), 1.0);
    // The echo flow's packets reach its ACE's totals at the next sweep (every 10 s).
    let ace2 = [("app", "app1"), ("ace", "2"), ("user", "true")];
    let total = (n + 1) * 2;
    wait_until(scaled(Duration::from_secs(25)), || metric(&s.scrape_metrics(), "netns_agent_ace_packets_total", &ace2) >= total as f64);
    let last = s.scrape_metrics();
    assert_eq!(metric(&last, "netns_agent_ace_packets_total", &ace2), total as f64, "both ways, every echo");
    assert_eq!(metric(&last, "netns_agent_ace_flows_total", &ace2), 2.0, "two sockets (the first exchange and the count): two flows");
    assert!(metric(&last, "netns_agent_map_capacity_entries", &[("map", "CT_V4")]) >= 65536.0);
    assert!(metric(&last, "netns_agent_map_entries", &[("map", "CT_V4")]) >= 1.0);
    assert_eq!(metric(&last, "netns_agent_applies_total", &[("result", "ok")]), 1.0);
    // promtool reads it as Prometheus would.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), last.as_bytes()).unwrap();
    drop(check.stdin.take());
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}

/// With the agent stopped (SIGSTOP) the ring buffer fills: the events it had no room
/// for are counted, and the records written plus the events lost account for every
/// dropped flow.
#[test]
fn lost_events_are_counted() {
    let (s, log) = scenario(&[]);
    let pid = s.agent_pid().expect("the agent runs");
    // More denied flows than the ring buffer holds (1 MiB: about 9k events).
    let n = 12000;
    // Each from its own source port: a repeated tuple would be the same dropped flow.
    let flood = r#"
import socket, sys
for i in range(int(sys.argv[2])):
    d = socket.socket(); d.setblocking(False)
    d.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    d.bind(("0.0.0.0", 10000 + i))
    d.connect_ex((sys.argv[1], 7001))
    d.close()
"#;
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    signal("-STOP");
    let out = s.python(s.app("app1"), flood, &[INET_IP, &n.to_string()]);
    signal("-CONT");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lost = s.counter("event_lost");
    wait_until(scaled(Duration::from_secs(20)), || count(&records(&log), RecordKind::Dropped, 7001) as u64 + lost >= n);
    let written = count(&records(&log), RecordKind::Dropped, 7001) as u64;
    println!("{n} denied flows while the agent was stopped: {written} records, {lost} events lost");
    assert!(lost > 0, "the ring buffer overflowed");
    assert_eq!(written + lost, n, "every flow is a record or a counted loss");
}
