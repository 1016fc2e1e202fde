//! Every flow on record: the flow log holds one record per flow event (start, dropped,
//! interim, end) from the data path's ring buffer and the agent's sweep, rotates by size,
//! and `flows --follow` streams the same records live.

use std::time::Duration;

use netns_tests::{load_size, scaled, wait_until, Background, Scenario, INET_IP};
use serde_json::Value;

/// app1 may reach the internet host's TCP 7000 (ACE 1); everything else is dropped.
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
acl = [{ id = 1, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7000 } }]
"##;

fn scenario(agent_keys: &[&str]) -> (Scenario, std::path::PathBuf) {
    let mut s = Scenario::with_uplinks(&["ni1"], &["app1"], 1, LOCAL);
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
fn records(log: &std::path::Path) -> Vec<Value> {
    let mut files: Vec<std::path::PathBuf> = (1..=3).rev().map(|i| std::path::PathBuf::from(format!("{}.{i}", log.display()))).collect();
    files.push(log.to_path_buf());
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| text.lines().map(|l| serde_json::from_str::<Value>(l).expect("a JSON record per line")).collect::<Vec<_>>())
        .collect()
}

fn count(records: &[Value], kind: &str, dport: u16) -> usize {
    records.iter().filter(|r| r["kind"] == kind && r["dport"] == dport).count()
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
    // The ends come as both sides close; a wait, not a timed check.
    wait_until(scaled(Duration::from_secs(30)), || count(&records(&log), "end", 7000) >= conns as usize);
    let all = records(&log);
    let ends: Vec<&Value> = all.iter().filter(|r| r["kind"] == "end" && r["dport"] == 7000).collect();
    let dropped: Vec<&Value> = all.iter().filter(|r| r["kind"] == "dropped" && r["dport"] == 7001).collect();
    println!(
        "flow log: {} starts, {} ends, {} dropped (of {conns} connections and {denied} denied attempts); event_lost {}",
        count(&all, "start", 7000),
        ends.len(),
        dropped.len(),
        s.counter("event_lost")
    );
    assert_eq!(count(&all, "start", 7000), conns as usize);
    assert_eq!(ends.len(), conns as usize);
    assert_eq!(dropped.len(), denied as usize);
    for r in &ends {
        assert_eq!((r["acl_id"].as_u64(), r["action"].as_str(), r["app"].as_str()), (Some(1), Some("accept"), Some("app1")), "{r}");
        assert_eq!(r["end_reason"], "closed", "{r}");
        // The payload plus at least the headers of SYN, data and FIN each way.
        assert!(r["tx_bytes"].as_u64().unwrap() >= 100 + 3 * 40 && r["rx_bytes"].as_u64().unwrap() >= 100 + 3 * 40, "{r}");
        assert!(r["tx_packets"].as_u64().unwrap() >= 4 && !r["inbound"].as_bool().unwrap(), "{r}");
    }
    for r in &dropped {
        assert_eq!((r["acl_id"].as_u64(), r["action"].as_str(), r["drop_reason"].as_str()), (Some(0x3f_ffff), Some("drop"), Some("drop_acl")), "{r}");
    }
    assert_eq!(s.counter("event_lost"), 0);
}

/// A flow alive for three interim intervals gets interim records, then one end record;
/// the counters only grow and the end has what the client sent.
#[test]
fn long_flows_get_interim_records_and_one_end() {
    let (s, log) = scenario(&["flow_interim_secs = 2"]);
    let script = netns_tests::py_script("echo_session.py");
    // A line a second for 35 s: the sweep (every 10 s) reports it at least three times.
    let session = s.background(s.app("app1"), &["python3", &script, INET_IP, "7000", "35", "1"]);
    let out = session.finish();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["error"], Value::Null, "{result}");
    wait_until(scaled(Duration::from_secs(20)), || count(&records(&log), "end", 7000) >= 1);
    let all = records(&log);
    let interim: Vec<&Value> = all.iter().filter(|r| r["kind"] == "interim" && r["dport"] == 7000).collect();
    let ends: Vec<&Value> = all.iter().filter(|r| r["kind"] == "end" && r["dport"] == 7000).collect();
    println!("a 35 s flow: {} interim records, {} end; sent {} lines", interim.len(), ends.len(), result["sent"]);
    assert!(interim.len() >= 3, "{interim:?}");
    assert_eq!(ends.len(), 1);
    let mut last = 0;
    for r in interim.iter().chain(ends.iter()) {
        let tx = r["tx_bytes"].as_u64().unwrap();
        assert!(tx >= last, "counters only grow: {r}");
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
    let first: Value = serde_json::from_str(&follow.read_line()).expect("a record from --follow");
    assert_eq!(first["kind"], "dropped", "{first}");
    wait_until(scaled(Duration::from_secs(10)), || count(&records(&log), "dropped", 7001) >= 300);
    let sizes: Vec<u64> = std::iter::once(log.clone())
        .chain((1..=4).map(|i| std::path::PathBuf::from(format!("{}.{i}", log.display()))))
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    println!("300 dropped flows with a 4096-byte bound: file sizes {sizes:?}");
    assert!(sizes[..4].iter().all(|n| *n <= 4096), "{sizes:?}");
    assert_eq!(sizes[4], 0, "three old files kept, no more");
    assert!(sizes[3] > 0, "rotated three times at least");
}
