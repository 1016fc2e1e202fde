//! The redirect fast path: the allowed flows of a local NI, from their first packet, skip
//! the NI's bridge and the routing of the NI's and the agent's netns (the programs
//! redirect them), and nothing visible changes: the same bytes arrive, the flow records
//! count them. What must take the kernel's path does: hairpin port maps, packets whose
//! neighbour is not resolved yet, every flow once `[agent] fast_path = false` is applied
//! (and again when it is set back); switch and VPN NIs in their own tests.

use std::time::Duration;

use netns_agent::flows::FlowRecord;
use netns_tests::{fast_path_counters, metric, scaled, Background, EchoResult, Scenario, UdpCounter, INET_IP};

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
  { id = 3, match = { ip = "10.99.0.10/32", protocol = "udp", fport = 7007 } },
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
    scenario_with(&[])
}

/// `scenario` with `agent_keys` in the config's `[agent]`.
fn scenario_with(agent_keys: &[&str]) -> Scenario {
    let mut s = Scenario::with_uplinks(&["ni1", "ni2"], &["app1", "app2"], 1, TWO_NIS);
    s.fast_path = Some(true);
    s.write_config(TWO_NIS);
    for k in agent_keys {
        s.set_agent_key(k);
    }
    s.echo_server(&s.inet.clone(), INET_IP, 7);
    s.start_agent();
    s
}

fn fast_counters(s: &Scenario) -> [u64; 8] {
    let c = s.flows_report().counters;
    fast_path_counters().map(|name| *c.get(name).unwrap_or_else(|| panic!("no counter {name}")))
}

fn since(before: [u64; 8], after: [u64; 8]) -> [u64; 8] {
    std::array::from_fn(|i| after[i] - before[i])
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

/// Packets app1's port (in ni1) sent to app1 (its egress: the to-app program and the
/// veth's queue).
fn app1_port_tx(s: &Scenario) -> u64 {
    let out = s.exec(s.ni("ni1"), &["cat", "/sys/class/net/nbu1x1/statistics/tx_packets"]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("app1's port: {out:?}"))
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
    let (before, rx, tx, port_tx) = (fast_counters(&s), bridge_rx(&s, "ni1"), ni_veth_tx(&s, "ni1"), app1_port_tx(&s));
    let f = echo_to_inet(&s);
    let [from_app, past_ni_veth, to_uplink, snat_done, from_uplink, ni_nat_done, to_app, into_app] = since(before, fast_counters(&s));
    let (rx, tx, port_tx) = (bridge_rx(&s, "ni1") - rx, ni_veth_tx(&s, "ni1") - tx, app1_port_tx(&s) - port_tx);
    println!(
        "fast path on: flow {}/{} packets, fast {from_app}/{past_ni_veth}/{to_uplink}/{snat_done} out, {from_uplink}/{ni_nat_done}/{to_app}/{into_app} back; \
         bridge rx {rx}, NI veth tx {tx}, app1's port tx {port_tx}",
        f.packets_orig, f.packets_reply
    );
    // Every packet but the first few (the neighbours resolved by the kernel's path; the
    // first, before the translations were made, not translated before the egresses)
    // took the fast path, each hop of it, both ways.
    for (fast, packets, what) in [
        (from_app, f.packets_orig, "from app"),
        (past_ni_veth, f.packets_orig, "past the NI veth"),
        (to_uplink, f.packets_orig, "to uplink"),
        (snat_done, f.packets_orig, "translated before the uplink's egress"),
        (from_uplink, f.packets_reply, "from uplink"),
        (ni_nat_done, f.packets_reply, "translated back to the app at the uplink"),
        (to_app, f.packets_reply, "to app"),
        (into_app, f.packets_reply, "into app1's netns"),
    ] {
        assert!(fast + 4 >= packets && fast <= packets, "{what}: {fast} of the flow's {packets} packets took the fast path");
    }
    assert!(rx <= 8, "the bridge passed {rx} packets up to the NI's routing (of {})", f.packets_orig);
    // Translated at the app's port and handed to the agent-side veth: not sent by the
    // NI's end (the first packets were, before the translation existed).
    assert!(tx <= 8, "the NI veth sent {tx} of the flow's {} packets", f.packets_orig);
    assert!(from_app - past_ni_veth <= tx, "{} fast packets not handed past the NI veth, which sent {tx}", from_app - past_ni_veth);
    // Handed into app1's netns past its port, counted all the same (the flow record
    // below; the port's counters: `flowlog::metrics_move_by_exactly_the_traffic_sent`):
    // not sent by the port.
    assert!(port_tx <= 8, "app1's port sent {port_tx} of the flow's {} replies", f.packets_reply);
    assert!(to_app - into_app <= port_tx, "{} fast replies not handed into app1, whose port sent {port_tx}", to_app - into_app);
    // The same record as on the kernel's path: both translations, all the bytes.
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");
    assert_eq!(f.mark, "0x01400001", "{f:#?}");
    assert!(f.translated.len() == 2 && f.translated[1].starts_with("192.168.0.2:"), "{f:#?}");

    // Off: the same echo through the bridge and both routings, counted the same.
    set_fast_path(&mut s, false);
    let (before, rx, tx, port_tx) = (fast_counters(&s), bridge_rx(&s, "ni1"), ni_veth_tx(&s, "ni1"), app1_port_tx(&s));
    let f = echo_to_inet(&s);
    let (rx, tx, port_tx) = (bridge_rx(&s, "ni1") - rx, ni_veth_tx(&s, "ni1") - tx, app1_port_tx(&s) - port_tx);
    assert_eq!(since(before, fast_counters(&s)), [0; 8], "fast_path = false: nothing takes the fast path");
    assert!(rx >= f.packets_orig, "the bridge passed {rx} of the flow's {} packets up", f.packets_orig);
    assert!(tx >= f.packets_orig, "the NI veth sent {tx} of the flow's {} packets", f.packets_orig);
    assert!(port_tx >= f.packets_reply, "app1's port sent {port_tx} of the flow's {} replies", f.packets_reply);
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");

    // On again, live.
    set_fast_path(&mut s, true);
    let before = fast_counters(&s);
    let f = echo_to_inet(&s);
    let [from_app, _, _, _, _, _, to_app, _] = since(before, fast_counters(&s));
    assert!(from_app + 4 >= f.packets_orig && to_app + 4 >= f.packets_reply, "fast path back on: {from_app}, {to_app} of {f:#?}");
}

/// A new flow takes the fast path from its first packet: the SYN too skips the bridge
/// and both routings. Its translation at the NI veth is made at the app's port, as that
/// veth's egress would make it, and the SYN handed past the veth like every later
/// packet; it leaves the agent's netns untranslated, for the uplink's egress program to
/// make the flow's second translation (as on the kernel's path); its later packets are
/// translated before that egress too.
#[test]
fn a_new_flow_takes_the_fast_path_from_its_first_packet() {
    let s = scenario();
    // One flow first: the neighbours on the way resolved (a lookup that finds one not
    // resolved leaves the packet to the kernel's path, which resolves it).
    echo_to_inet(&s);
    let (before, rx, tx) = (fast_counters(&s), bridge_rx(&s, "ni1"), ni_veth_tx(&s, "ni1"));
    let f = echo_to_inet(&s);
    let [from_app, past_ni_veth, to_uplink, snat_done, ..] = since(before, fast_counters(&s));
    let (rx, tx) = (bridge_rx(&s, "ni1") - rx, ni_veth_tx(&s, "ni1") - tx);
    println!(
        "a new flow of {} packets out: fast {from_app}/{past_ni_veth}/{to_uplink}/{snat_done}; bridge rx {rx}, NI veth tx {tx}",
        f.packets_orig
    );
    assert_eq!(from_app, f.packets_orig, "every packet of the flow went past the bridge and the NI's routing, the SYN too");
    assert_eq!(to_uplink, f.packets_orig, "every packet of the flow went past the agent's routing, the SYN too");
    assert_eq!(past_ni_veth, f.packets_orig, "every packet was translated at the app's port, the SYN too");
    assert_eq!(snat_done, f.packets_orig - 1, "all but the SYN were translated before the uplink's egress");
    assert!(rx <= 2, "the bridge passed {rx} packets up to the NI's routing (an ARP at most)");
    assert!(tx <= 2, "the NI veth sent {tx} packets (an ARP at most): none of the flow's");
    assert!(f.translated.len() == 2 && f.translated[1].starts_with("192.168.0.2:"), "both translations made: {f:#?}");
}

/// The fast path writes the MACs of an NI's veth ends itself, on the way out of the NI
/// and back into it: the ones the agent read when it applied the NI (no FIB lookup,
/// no neighbour entry). A veth made anew has new ones: here the NI's veth is deleted
/// from outside, the next apply makes it again, and the hops write its new MACs.
#[test]
fn a_veth_made_anew_gives_the_fast_path_its_new_macs() {
    let s = scenario();
    echo_to_inet(&s);
    let ni1 = s.ni("ni1").to_string();
    let veth_mac = || String::from_utf8_lossy(&s.exec(&ni1, &["sh", "-c", "cat /sys/class/net/veth*.1/address"]).stdout).trim().to_string();
    let old_mac = veth_mac();
    let out = s.exec(&ni1, &["sh", "-c", "ip link del $(basename /sys/class/net/veth*.1)"]);
    assert!(out.status.success(), "deleting ni1's veth: {}", String::from_utf8_lossy(&out.stderr));
    let out = s.apply(TWO_NIS);
    assert!(out.status.success(), "apply after the veth went: {}", String::from_utf8_lossy(&out.stderr));
    let new_mac = veth_mac();
    assert!(!new_mac.is_empty() && new_mac != old_mac, "ni1's veth made anew: {old_mac} -> {new_mac}");
    assert_hops_write_routings_macs(&s);
}

/// On the kernel's path an app's frame goes up to the NI's routing only when it is for
/// the gateway's MAC; for any other MAC the bridge forwards it (here it floods it: no
/// port has that MAC), whatever its IP destination. The fast path routes the same frames
/// only. app1 sends 10 datagrams of its allowed UDP flow to the internet host under the
/// gateway's MAC and 10 under another MAC: the host gets the first 10 alone.
#[test]
fn an_apps_frames_for_another_mac_are_bridged_not_routed() {
    let s = scenario();
    let (app1, inet) = (s.app("app1").to_string(), s.inet.clone());
    let receiver = UdpCounter::start(&inet, INET_IP, 7007);
    // (Debian's python3: scapy is its package.)
    let sent = s.exec(
        &app1,
        &[
            "/usr/bin/python3",
            "-c",
            "from scapy.all import Ether, IP, UDP, get_if_hwaddr, sendp\n\
             mac = get_if_hwaddr('nbu1x1.1')\n\
             for dst, sport in (('02:16:3e:01:00:00', 40001), ('02:00:00:00:00:99', 40002)):\n\
             \x20   frame = Ether(src=mac, dst=dst) / IP(src='10.10.1.2', dst='10.99.0.10') / UDP(sport=sport, dport=7007) / b'x'\n\
             \x20   sendp([frame] * 10, iface='nbu1x1.1', verbose=0)",
        ],
    );
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let got = receiver.count();
    assert_eq!(got, 10, "the internet host got the datagrams sent to the gateway's MAC, and none of the others");
}

/// Turns off transmit checksum offload on the one interface of netns `ns` (SIOCETHTOOL,
/// ETHTOOL_STXCSUM): its packets leave with whole checksums, which no veth vouches for
/// further on, so the receiving stack checks them, after every translation.
fn whole_checksums(s: &Scenario, ns: &str) {
    const PY: &str = "import ctypes, fcntl, socket, struct
name = [n for _, n in socket.if_nameindex() if n != 'lo'][0]
buf = ctypes.create_string_buffer(struct.pack('II', 0x17, 0))
ifr = struct.pack('16sQ', name.encode(), ctypes.addressof(buf))
sock = socket.socket()
fcntl.ioctl(sock.fileno(), 0x8946, ifr)";
    let out = s.exec(ns, &["python3", "-c", PY]);
    assert!(out.status.success(), "tx checksum offload off in {ns}: {}", String::from_utf8_lossy(&out.stderr));
}

/// TCP and UDP with whole checksums: app1's packets leave it with their checksums
/// computed (not left to the offload, which also means no TSO: small echoes, so that
/// the emulated VM keeps up), so the internet host's stack checks each after both
/// translations, the first at app1's port. UDP takes the same hop as TCP once
/// answered; the internet host sees the uplink's address only.
#[test]
fn tcp_and_udp_are_translated_at_the_app_port_with_whole_checksums() {
    let s = scenario();
    whole_checksums(&s, s.app("app1"));
    let (before, tx) = (fast_counters(&s), ni_veth_tx(&s, "ni1"));
    // (A segment the internet host dropped for its checksum would be sent again until
    // the echo gave up.)
    assert_eq!(s.echo(s.app("app1"), INET_IP, 7, 100_000, None), EchoResult::Echoed(100_000));
    let [from_app, past_ni_veth, ..] = since(before, fast_counters(&s));
    let tx = ni_veth_tx(&s, "ni1") - tx;
    println!("tcp, whole checksums: fast {from_app}/{past_ni_veth} out; NI veth tx {tx}");
    assert!(past_ni_veth >= 20 && tx <= 8, "the echo's segments took the hop: {past_ni_veth} of them; the NI veth sent {tx}");
    let script = netns_tests::py_script("udp_echo.py");
    let idle = scaled(Duration::from_secs(2)).as_secs().to_string();
    let mut server = s.background(&s.inet.clone(), &["python3", "-u", &script, "server", INET_IP, "7007", &idle]);
    assert_eq!(server.read_line().trim(), "ready", "the echo server did not start");
    let (before, tx) = (fast_counters(&s), ni_veth_tx(&s, "ni1"));
    let out = s.exec(s.app("app1"), &["python3", &script, "client", INET_IP, "7007", "1000", "50"]);
    let echoed: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let [from_app, past_ni_veth, to_uplink, snat_done, ..] = since(before, fast_counters(&s));
    let tx = ni_veth_tx(&s, "ni1") - tx;
    println!("udp: 50 datagrams, {echoed} echoed; fast {from_app}/{past_ni_veth}/{to_uplink}/{snat_done} out; NI veth tx {tx}");
    assert_eq!(echoed, 50, "every datagram came back whole: {}", String::from_utf8_lossy(&out.stderr));
    // Translated at both hops before the egress that would have (the internet host
    // checks the checksums, and says below which source it saw).
    assert!(
        from_app >= 48 && past_ni_veth >= 48 && to_uplink >= 48 && snat_done >= 48,
        "the answered flow's datagrams took the fast path: {from_app}, {past_ni_veth}, {to_uplink}, {snat_done}"
    );
    assert!(tx <= 4, "the NI veth sent {tx} of the 50 datagrams");
    let seen = String::from_utf8_lossy(&server.finish().stdout).lines().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(seen, ["192.168.0.2"], "sources the internet host saw");
}

/// A UDP flow that resumes after the shortest time its translation pair may have been
/// swept in (30 s idle, `nat::may_have_lost_reply_half`) is not translated at the app's
/// port: its first datagram goes to the NI veth's egress, whose program checks the
/// reply half (and makes it again if the sweep took it); the next ones take the hop
/// again. Every datagram is echoed.
#[test]
fn a_udp_flow_resumed_after_30_s_idle_has_its_reply_half_checked_at_the_ni_veth() {
    let s = scenario();
    let app1 = s.app("app1").to_string();
    let script = netns_tests::py_script("udp_echo.py");
    // (Killed when dropped: it would wait out its idle time.)
    let mut server = s.background(&s.inet.clone(), &["python3", "-u", &script, "server", INET_IP, "7007", "600"]);
    assert_eq!(server.read_line().trim(), "ready", "the echo server did not start");
    // The same flow each time: the same source port.
    let echo = || {
        let out = s.exec(&app1, &["python3", &script, "client", INET_IP, "7007", "100", "5", "40123"]);
        String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap_or(0)
    };
    assert_eq!(echo(), 5);
    // Real time: the programs' clock, whatever NETNS_TEST_TIME_SCALE says.
    std::thread::sleep(Duration::from_secs(31));
    let (before, tx) = (fast_counters(&s), ni_veth_tx(&s, "ni1"));
    assert_eq!(echo(), 5, "the resumed flow's datagrams are all echoed");
    let [from_app, past_ni_veth, to_uplink, ..] = since(before, fast_counters(&s));
    let tx = ni_veth_tx(&s, "ni1") - tx;
    println!("resumed after 31 s: fast {from_app}/{past_ni_veth}/{to_uplink} out; NI veth tx {tx}");
    assert_eq!(from_app, 5, "every datagram of the answered flow went past the NI's routing");
    assert_eq!(past_ni_veth, 4, "all but the first were translated at the app's port");
    assert!((1..=3).contains(&tx), "the first went to the NI veth's egress (and perhaps an ARP): it sent {tx}");
    let flows = s.flows();
    let mine: Vec<_> = flows.iter().filter(|f| f.src == "10.10.1.2" && f.sport == 40123 && f.dport == 7007).collect();
    assert_eq!(mine.len(), 1, "one flow, resumed: {mine:#?}");
    assert_eq!((mine[0].packets_orig, mine[0].packets_reply), (10, 10), "{mine:#?}");
}

/// A reply handed into the app's netns past its port is counted as the port would
/// count it: the port's counters move by exactly the datagrams echoed, whole frames,
/// and the port itself sends none of them.
#[test]
fn replies_handed_into_the_app_count_at_its_port_exactly() {
    let s = scenario_with(&["metrics = \"127.0.0.1:9464\""]);
    let app1 = s.app("app1").to_string();
    let script = netns_tests::py_script("udp_echo.py");
    let idle = scaled(Duration::from_secs(30)).as_secs().to_string();
    // (Killed when dropped, at the end: it would wait out its idle time.)
    let mut server = s.background(&s.inet.clone(), &["python3", "-u", &script, "server", INET_IP, "7007", &idle]);
    assert_eq!(server.read_line().trim(), "ready", "the echo server did not start");
    let echo = |n: u64| s.exec(&app1, &["python3", &script, "client", INET_IP, "7007", "96", &n.to_string()]);
    // One exchange first: the flow answered, its translations made, ARP settled; then
    // no ARP in the counted window.
    assert_eq!(String::from_utf8_lossy(&echo(1).stdout).trim(), "1");
    s.pin_neighbour(&app1, "10.10.1.1");
    s.pin_neighbour(s.ni("ni1"), "10.10.1.2");
    let (before, counters, port_tx) = (s.scrape_metrics(), fast_counters(&s), app1_port_tx(&s));
    let n = 20u64;
    assert_eq!(String::from_utf8_lossy(&echo(n).stdout).trim(), n.to_string());
    let (after, [.., to_app, into_app], port_tx) = (s.scrape_metrics(), since(counters, fast_counters(&s)), app1_port_tx(&s) - port_tx);
    let to_app_port = [("app", "app1"), ("verdict", "pass"), ("direction", "to_app")];
    let delta = |name: &str| metric(&after, name, &to_app_port) - metric(&before, name, &to_app_port);
    let frame = (14 + 20 + 8 + 96) as f64;
    println!(
        "{n} echoes: fast to app {to_app}, into app {into_app}; port to_app {} packets / {} bytes; port tx {port_tx}",
        delta("netns_agent_port_packets_total"),
        delta("netns_agent_port_bytes_total")
    );
    assert_eq!((to_app, into_app), (n, n), "every reply was handed into app1's netns");
    assert_eq!(port_tx, 0, "app1's port sent none of them");
    assert_eq!(delta("netns_agent_port_packets_total"), n as f64, "counted at app1's port, to app");
    assert_eq!(delta("netns_agent_port_bytes_total"), n as f64 * frame, "whole frames");
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
    assert_eq!(since(before, fast_counters(&s)), [0; 8], "hairpin and EVE-initiated flows take no fast path");
    let flows = s.flows();
    let f = flows.iter().find(|f| f.ni == s.ni("ni2") && f.dport == 7 && f.mark == "0x02400001").expect("the port-mapped flow at app2");
    assert!(f.bytes_orig >= SENT as u64 && f.bytes_reply >= SENT as u64, "{f:#?}");
}

/// The fast path's hops write the MACs the agent read when it applied the NI, not ones
/// a FIB lookup gave: app1's packets to the internet host carry, on the agent's end of
/// ni1's veth, the NI end's MAC as source and the agent end's as destination (as the
/// NI's routing would send them); the replies carry, on the NI end, the agent end's MAC
/// as source and the NI end's as destination (as the agent's routing would), and in
/// app1's netns the bridge's as source and app1's as destination (as the NI's routing
/// would). Seen by captures on those interfaces.
#[test]
fn packets_carry_the_macs_routing_would_give_them() {
    let s = scenario();
    assert_hops_write_routings_macs(&s);
}

/// An echo from app1 to the internet host, captured where each hop hands it on (see
/// `packets_carry_the_macs_routing_would_give_them`): the MACs the fast path wrote.
fn assert_hops_write_routings_macs(s: &Scenario) {
    let app1 = s.app("app1").to_string();
    let ni1 = s.ni("ni1").to_string();
    let zedbox = s.zedbox.clone();
    let sh = |ns: &str, cmd: &str| String::from_utf8_lossy(&s.exec(ns, &["sh", "-c", cmd]).stdout).trim().to_string();
    let ni_end = sh(&ni1, "cd /sys/class/net && ls -d veth*.1");
    let agent_end = ni_end.trim_end_matches(".1").to_string();
    let mac = |ns: &str, dev: &str| sh(ns, &format!("cat /sys/class/net/{dev}/address"));
    let (ni_end_mac, agent_end_mac, bridge_mac, app_mac) =
        (mac(&ni1, &ni_end), mac(&zedbox, &agent_end), mac(&ni1, "br"), mac(&app1, "nbu1x1.1"));
    // The flow answered, the neighbours settled: the next echo takes the fast path from
    // its first segment.
    assert_eq!(s.echo(&app1, INET_IP, 7, 1000, None), EchoResult::Echoed(1000));
    // Each capture prints its `listening` line on stdout once it listens, then the
    // first 20 packets with their link-level header.
    let capture = |ns: &str, dev: &str, filter: &str| Background::tcpdump(ns, &format!("tcpdump -l -e -n -c 20 -i {dev} {filter}"));
    let (out_filter, back_filter) = (format!("dst host {INET_IP} and tcp dst port 7"), format!("src host {INET_IP} and tcp src port 7"));
    let on_agent_end = capture(&zedbox, &agent_end, &out_filter);
    let (on_ni_end, in_app) = (capture(&ni1, &ni_end, &back_filter), capture(&app1, "nbu1x1.1", &back_filter));
    let before = fast_counters(s);
    assert_eq!(s.echo(&app1, INET_IP, 7, SENT, None), EchoResult::Echoed(SENT));
    let [from_app, past_ni_veth, _, _, from_uplink, _, _, into_app] = since(before, fast_counters(s));
    assert!(
        from_app >= 20 && past_ni_veth >= 20 && from_uplink >= 20 && into_app >= 20,
        "the packets took the hops: {from_app} from app1, {past_ni_veth} past the NI veth; {from_uplink} from the uplink, {into_app} into app1"
    );
    // "<time> <src MAC> > <dst MAC>, ethertype IPv4 ...": the MAC pairs seen.
    let pairs = |c: Background| -> Vec<(String, String)> {
        let out = String::from_utf8_lossy(&c.finish().stdout).to_string();
        let seen: Vec<_> = out
            .lines()
            .filter(|l| l.contains("ethertype IPv4"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(1)?.to_string(), f.get(3)?.trim_end_matches(',').to_string()))
            })
            .collect();
        assert_eq!(seen.len(), 20, "20 packets captured: {out}");
        seen
    };
    for (src, dst) in pairs(on_agent_end) {
        assert_eq!((src.as_str(), dst.as_str()), (ni_end_mac.as_str(), agent_end_mac.as_str()), "a packet out on {agent_end}");
    }
    for (src, dst) in pairs(on_ni_end) {
        assert_eq!((src.as_str(), dst.as_str()), (agent_end_mac.as_str(), ni_end_mac.as_str()), "a reply on {ni_end}");
    }
    for (src, dst) in pairs(in_app) {
        assert_eq!((src.as_str(), dst.as_str()), (bridge_mac.as_str(), app_mac.as_str()), "a reply in app1's netns");
    }
}
