//! The redirect fast path: the established flows of a local NI skip the NI's bridge and
//! the routing of the NI's and the agent's netns (the programs redirect them), and
//! nothing visible changes: the same bytes arrive, the flow records count them. What
//! must take the kernel's path does: a flow's first packets, hairpin port maps, every
//! flow once `[agent] fast_path = false` is applied (and again when it is set back);
//! switch and VPN NIs in their own tests.

use netns_agent::flows::FlowRecord;
use netns_tests::{EchoResult, Scenario, FAST_PATH_COUNTERS, INET_IP};

/// ni1 and ni2 on eth0; app2 (ni2) exposes its port 7 as eth0's 8007.
const TWO_NIS: &str = r#"
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
acl = [
  { id = 1, match = { ip = "10.99.0.10/32", protocol = "tcp", fport = 7 } },
  { id = 2, match = { ip = "192.168.0.2/32", protocol = "tcp", fport = 8007 } },
]

[[app]]
name = "app2"
netns = "@app2"
[[app.interface]]
network = "@ni2"
ip = "10.10.2.2"
acl = [{ id = 1, match = { protocol = "tcp", lport = 8007 }, action = { portmap = 7 } }]
"#;

const SENT: usize = 2_000_000;

/// The fast path on, whatever NETNS_TEST_FAST_PATH says for the rest of the suite.
fn scenario() -> Scenario {
    let mut s = Scenario::with_uplinks(&["ni1", "ni2"], &["app1", "app2"], 1, TWO_NIS);
    s.fast_path = Some(true);
    s.write_config(TWO_NIS);
    s.echo_server(&s.inet.clone(), INET_IP, 7);
    s.start_agent();
    s
}

fn fast_counters(s: &Scenario) -> [u64; 4] {
    let c = s.flows_report().counters;
    FAST_PATH_COUNTERS.map(|name| *c.get(name).unwrap_or_else(|| panic!("no counter {name}")))
}

fn since(before: [u64; 4], after: [u64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

/// Packets the NI's bridge passed up to the NI's routing.
fn bridge_rx(s: &Scenario, ni: &str) -> u64 {
    let out = s.exec(s.ni(ni), &["cat", "/sys/class/net/br/statistics/rx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Packets the NI's end of its veth to the agent sent (its egress: the NAT program and
/// the veth's queue), whatever the NI's index.
fn ni_veth_tx(s: &Scenario, ni: &str) -> u64 {
    let out = s.exec(s.ni(ni), &["sh", "-c", "cat /sys/class/net/veth*.1/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{ni}'s veth: {out:?}"))
}

/// app1's echo of `SENT` bytes to the internet host, and its flow record (the flow log's
/// newest of app1 to port 7).
fn echo_to_inet(s: &Scenario) -> FlowRecord {
    assert_eq!(s.echo(s.app("app1"), INET_IP, 7, SENT, None), EchoResult::Echoed(SENT));
    let flows = s.flows();
    let mine = |f: &FlowRecord| f.src == "10.10.1.2" && f.dst == INET_IP && f.dport == 7;
    let newest = flows.iter().enumerate().filter(|(_, f)| mine(f)).min_by(|a, b| a.1.age_secs.total_cmp(&b.1.age_secs)).map(|(i, _)| i);
    let newest = newest.unwrap_or_else(|| panic!("app1's flow to {INET_IP}:7 is recorded: {flows:#?}"));
    flows.into_iter().nth(newest).unwrap()
}

fn set_fast_path(s: &mut Scenario, on: bool) {
    s.fast_path = Some(on);
    let out = s.apply(TWO_NIS);
    assert!(out.status.success(), "apply fast_path = {on}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn established_flows_skip_the_bridge_and_both_routings_and_count_the_same() {
    let mut s = scenario();
    let (before, rx, tx) = (fast_counters(&s), bridge_rx(&s, "ni1"), ni_veth_tx(&s, "ni1"));
    let f = echo_to_inet(&s);
    let [from_app, to_uplink, from_uplink, to_app] = since(before, fast_counters(&s));
    let (rx, tx) = (bridge_rx(&s, "ni1") - rx, ni_veth_tx(&s, "ni1") - tx);
    println!(
        "fast path on: flow {}/{} packets, fast {from_app}/{to_uplink} out, {from_uplink}/{to_app} back; bridge rx {rx}, NI veth tx {tx}",
        f.packets_orig, f.packets_reply
    );
    // Every packet but the first few (before the reply, and the neighbours resolved by
    // the kernel's path) took the fast path, each hop of it, both ways.
    for (fast, packets, what) in [
        (from_app, f.packets_orig, "from app"),
        (to_uplink, f.packets_orig, "to uplink"),
        (from_uplink, f.packets_reply, "from uplink"),
        (to_app, f.packets_reply, "to app"),
    ] {
        assert!(fast + 4 >= packets && fast <= packets, "{what}: {fast} of the flow's {packets} packets took the fast path");
    }
    assert!(rx <= 8, "the bridge passed {rx} packets up to the NI's routing (of {})", f.packets_orig);
    // Translated at the app's port and handed to the agent-side veth: not sent by the
    // NI's end (the first packets were, before the translation existed).
    assert!(tx <= 8, "the NI veth sent {tx} of the flow's {} packets", f.packets_orig);
    // The same record as on the kernel's path: both translations, all the bytes.
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");
    assert_eq!(f.mark, "0x01400001", "{f:#?}");
    assert!(f.translated.len() == 2 && f.translated[1].starts_with("192.168.0.2:"), "{f:#?}");

    // Off: the same echo through the bridge and both routings, counted the same.
    set_fast_path(&mut s, false);
    let (before, rx, tx) = (fast_counters(&s), bridge_rx(&s, "ni1"), ni_veth_tx(&s, "ni1"));
    let f = echo_to_inet(&s);
    let (rx, tx) = (bridge_rx(&s, "ni1") - rx, ni_veth_tx(&s, "ni1") - tx);
    assert_eq!(since(before, fast_counters(&s)), [0; 4], "fast_path = false: nothing takes the fast path");
    assert!(rx >= f.packets_orig, "the bridge passed {rx} of the flow's {} packets up", f.packets_orig);
    assert!(tx >= f.packets_orig, "the NI veth sent {tx} of the flow's {} packets", f.packets_orig);
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");

    // On again, live.
    set_fast_path(&mut s, true);
    let before = fast_counters(&s);
    let f = echo_to_inet(&s);
    let [from_app, _, _, to_app] = since(before, fast_counters(&s));
    assert!(from_app + 4 >= f.packets_orig && to_app + 4 >= f.packets_reply, "fast path back on: {from_app}, {to_app} of {f:#?}");
}

/// A hairpin (app1 in ni1 -> eth0's own address:8007 -> app2 in ni2) goes through the
/// agent's routing twice and a port map: it takes the kernel's path all the way, as do
/// EVE's own connections to the apps.
#[test]
fn hairpins_and_the_agents_own_flows_take_the_kernels_path() {
    let mut s = scenario();
    let app2 = s.app("app2").to_string();
    s.echo_server(&app2, "10.10.2.2", 7);
    let before = fast_counters(&s);
    assert_eq!(s.echo(s.app("app1"), "192.168.0.2", 8007, SENT, None), EchoResult::Echoed(SENT));
    let zedbox = s.zedbox.clone();
    assert_eq!(s.echo(&zedbox, "10.10.2.2", 7, 200_000, Some("veth2")), EchoResult::Echoed(200_000), "the agent's netns reaches app2");
    assert_eq!(since(before, fast_counters(&s)), [0; 4], "hairpin and EVE-initiated flows take no fast path");
    let flows = s.flows();
    let f = flows.iter().find(|f| f.ni == s.ni("ni2") && f.dport == 7 && f.mark == "0x02400001").expect("the port-mapped flow at app2");
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");
}
