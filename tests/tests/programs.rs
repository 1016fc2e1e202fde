//! The four TC programs on crafted frames through BPF_PROG_TEST_RUN: no namespaces, no
//! links, no traffic. Each test loads the agent's own object into a pin directory of its
//! own, fills the maps through the agent's `Maps` (the port's ACL from a config, as the
//! agent plans it), runs a program on a frame and checks the verdict, the mark, the
//! rewritten addresses and ports, the checksums (recomputed from scratch), the conntrack
//! and NAT entries and the counters. The kernel runs the program on loopback (ifindex 1):
//! the port's and the translating interface's entries are keyed by it.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, ProgramArray, RingBuf},
    TestRun, TestRunOptions,
};
use netns_agent::{
    config,
    datapath::{self, Maps, Programs},
    plan::{self, NiPlan, PortPlan},
    reconcile,
};
use netns_ebpf_common::{
    acl::{self, Ace},
    classify::{self, Bits, ProtoBitsKey, SummaryKey, SummaryPage, CHUNK_WORDS},
    ct,
    event::{FlowEvent, EVENT_REPLACED, EVENT_START},
    fast::{FastZone, NI_NAT_DONE_MARK, TAIL_FROM_APP},
    map_names, mark,
    nat::{NatIface, PortmapKey, PortmapTarget, DOMAIN_AGENT},
    prog_names, HostKey, IfaceInfo, IfaceKey, Stat, ZoneUse, IFACE_FLAG_IP_KNOWN, IFACE_FLAG_IP_LEARN, IFACE_FLAG_SWITCH,
    PORT_DIR_FROM_APP, PORT_DIR_TO_APP, VETH_NET,
};
use netns_tests::frame::{self, End, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// The kernel runs test packets on its loopback device.
const LOOPBACK: u32 = 1;
/// `struct __sk_buff` is 192 bytes today; room to spare, zeros are accepted.
const SKB_CTX: usize = 256;
/// `__sk_buff.mark`.
const SKB_MARK_OFF: usize = 8;
/// `__sk_buff.ingress_ifindex`.
const SKB_INGRESS_IFINDEX_OFF: usize = 36;

/// app1 on ni1 may reach 10.99.0.0/24 on tcp/80; its UDP to port 53 is dropped by ACE 2;
/// ACE 3 exposes its tcp/80 at the uplink's port 8080 (a port map).
const CONFIG: &str = r#"
[[uplink]]
name = "eth0"

[[network]]
name = "ni1"
kind = "local"
subnet = "10.10.1.0/24"
gateway = "10.10.1.1"
uplink = "eth0"

[[app]]
name = "app1"
netns = "app1"
[[app.interface]]
network = "ni1"
ip = "10.10.1.2"
mac = "02:16:3e:00:00:01"
acl = [
  { id = 1, match = { ip = "10.99.0.0/24", protocol = "tcp", fport = 80 } },
  { id = 2, match = { protocol = "udp", fport = 53 }, action = "drop" },
  { id = 3, match = { protocol = "tcp", lport = 8080 }, action = { portmap = 80 } },
]
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The programs loaded into a pin directory of their own, the maps opened, and app1's
/// port entry written for loopback.
struct Loaded {
    programs: Programs,
    maps: Maps,
    ni: NiPlan,
    port: PortPlan,
    zone: u32,
    nat_ports: (u16, u16),
    /// Last: removed after the programs and maps are closed.
    pins: PinDir,
}

/// A test's pin directory, removed on drop (also when a load or an assert panics).
struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a program made of a frame.
struct Ran {
    verdict: u32,
    frame: Vec<u8>,
    mark: u32,
}

impl Loaded {
    fn new() -> Loaded {
        assert!(nix::unistd::geteuid().is_root(), "program tests load eBPF programs: run them as root (cargo xtask test)");
        let cfg = config::parse("programs.rs", CONFIG, &config::AnyNetns).unwrap_or_else(|e| panic!("{e}"));
        let plan = plan::build(&cfg);
        let ni = &plan.nis[0];
        let port = ni.ports[0].clone();
        let pin_dir =
            PathBuf::from(format!("/sys/fs/bpf/netns-test-programs-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let pins = PinDir(pin_dir.clone());
        datapath::prepare_pin_dir(&pin_dir).unwrap();
        let programs = Programs::load(&pin_dir).unwrap_or_else(|e| panic!("{e:#}"));
        let mut maps = Maps::open(&pin_dir).unwrap();
        let key = IfaceKey { zone: ni.zone(), ifindex: LOOPBACK };
        // As the agent publishes a port: its ACL under an id of its own, then the entry.
        let acl_id = maps.write_acl(&port.acl, 0).unwrap();
        let info = reconcile::port_iface_info(ni, &port, acl_id);
        maps.set_port(key, info).unwrap();
        maps.ensure_port_counters(key).unwrap();
        Loaded { programs, maps, ni: ni.clone(), port, zone: ni.zone(), nat_ports: plan.nat_ports, pins }
    }

    fn run(&self, program: &str, frame: &[u8]) -> Ran {
        self.run_from(program, frame, 0)
    }

    /// `run`, the packet having come in by interface `ingress_ifindex` (0: none).
    fn run_from(&self, program: &str, frame: &[u8], ingress_ifindex: u32) -> Ran {
        let prog = self.programs.program(program).unwrap();
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx_in = [0u8; SKB_CTX];
        ctx_in[SKB_INGRESS_IFINDEX_OFF..SKB_INGRESS_IFINDEX_OFF + 4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx_in),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {program}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(ctx_out[SKB_MARK_OFF..SKB_MARK_OFF + 4].try_into().unwrap());
        Ran { verdict: r.return_value, frame: out, mark }
    }

    /// The flow events the programs wrote since the last call (FLOWEV_V2: no agent reads it here).
    fn events(&self) -> Vec<FlowEvent> {
        let ring = MapData::from_pin(self.pins.0.join(map_names::EVENTS)).unwrap();
        let mut ring = RingBuf::try_from(Map::RingBuf(ring)).unwrap();
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            events.push(FlowEvent::from_record(&item).unwrap_or_else(|| panic!("a short event: {} bytes", item.len())));
        }
        events
    }

    fn counter(&self, stat: Stat) -> u64 {
        self.maps.stats().iter().find(|(s, _)| *s == stat).map(|(_, n)| *n).unwrap_or(0)
    }

    fn app(&self, port: u16) -> End {
        End { mac: self.port.mac, ip: self.port.ip, port }
    }
}

const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

fn remote(ip: [u8; 4], port: u16) -> End {
    End { mac: GATEWAY_MAC, ip: Ipv4Addr::from(ip), port }
}

#[test]
fn from_app_verdicts_marks_and_counters_follow_the_acl() {
    let l = Loaded::new();
    let web = remote([10, 99, 0, 10], 80);

    let syn = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_SYN, b"");
    let ran = l.run(prog_names::APP_PORT_FROM_APP, &syn);
    assert_eq!(ran.verdict, TC_ACT_OK, "ACE 1 allows tcp/80 to 10.99.0.0/24");
    assert_eq!(ran.frame, syn, "an allowed packet leaves as it came");
    assert_eq!(ran.mark, mark::compose(l.port.app_num, 1, true, false), "the mark names app1 and its ACE 1: {:#x}", ran.mark);
    let flows = l.maps.flows();
    assert_eq!(flows.len(), 1, "one conntrack entry for the SYN");
    assert_eq!(flows[0].1.mark, ran.mark, "the flow keeps the mark");

    // The reply comes back through the to-app side: the flow's, no second judgement.
    let syn_ack = frame::ipv4(PROTO_TCP, web, l.app(40000), TCP_SYN | TCP_ACK, b"");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &syn_ack).verdict, TC_ACT_OK);
    assert_eq!(l.maps.flows().len(), 1, "the reply joins the flow");

    let drops_before = l.counter(Stat::DropAcl);
    let other_port = frame::ipv4(PROTO_TCP, l.app(40001), remote([10, 99, 0, 10], 81), TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &other_port).verdict, TC_ACT_SHOT, "no ACE allows tcp/81");
    let dns = frame::ipv4(PROTO_UDP, l.app(40002), remote([10, 99, 0, 53], 53), 0, b"q");
    let ran = l.run(prog_names::APP_PORT_FROM_APP, &dns);
    assert_eq!(ran.verdict, TC_ACT_SHOT, "ACE 2 drops udp/53");
    assert_eq!(l.counter(Stat::DropAcl), drops_before + 2);

    // Nothing from outside starts a flow toward the app (no port map exposes it).
    let inbound = frame::ipv4(PROTO_TCP, remote([10, 99, 0, 10], 5555), l.app(22), TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &inbound).verdict, TC_ACT_SHOT);

    let (passed, dropped) = port_counts(&l);
    assert_eq!(passed[PORT_DIR_FROM_APP], (1, syn.len() as u64), "from app: the SYN passed");
    assert_eq!(dropped[PORT_DIR_FROM_APP], (2, (other_port.len() + dns.len()) as u64), "from app: two dropped");
    assert_eq!(passed[PORT_DIR_TO_APP], (1, syn_ack.len() as u64), "to app: the SYN-ACK passed");
    assert_eq!(dropped[PORT_DIR_TO_APP], (1, inbound.len() as u64), "to app: the inbound SYN dropped");

    // The SYN went on in the fast path's program (FASTPROG_V1, by tail call), which
    // counted it. With no program there, the from-app program passes the packet to the
    // kernel's path and counts it itself.
    let tails = MapData::from_pin(l.pins.0.join(map_names::FAST_PROGRAMS)).unwrap();
    ProgramArray::try_from(Map::ProgramArray(tails)).unwrap().clear_index(&TAIL_FROM_APP).unwrap();
    let ack = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_ACK, b"");
    let ran = l.run(prog_names::APP_PORT_FROM_APP, &ack);
    assert_eq!((ran.verdict, ran.mark), (TC_ACT_OK, flows[0].1.mark), "the flow's packet passes with its mark");
    let (passed, _) = port_counts(&l);
    assert_eq!(passed[PORT_DIR_FROM_APP], (2, (syn.len() + ack.len()) as u64), "from app: the SYN and the ACK passed");
}

/// The bridge floods a unicast frame whose MAC it no longer knows (an app silent for 5
/// minutes), and a broadcast frame, to every port. Only the port of the app the packet is
/// for may judge it: judged at app1's port, the gateway's flow to app2 became app1's
/// (app2's answers then met an entry of another port's), and a broadcast frame carrying
/// a packet for app2 went through under app1's ACL (the entry serves app2's port too).
#[test]
fn copies_of_another_apps_frames_are_left_to_its_port() {
    let mut l = Loaded::new();
    let app2 = End { mac: [0x02, 0x16, 0x3e, 0, 0, 2], ip: Ipv4Addr::new(10, 10, 1, 3), port: 22 };
    l.maps.set_eid(l.zone, app2.ip.octets(), 2).unwrap();
    let gateway = End { mac: GATEWAY_MAC, ip: l.ni.gateway, port: 40000 };
    let before = l.counter(Stat::DropNotForApp);
    let flooded = frame::ipv4(PROTO_TCP, gateway, app2, TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &flooded).verdict, TC_ACT_SHOT, "a unicast frame for app2's MAC");
    let broadcast = frame::ipv4(PROTO_TCP, gateway, End { mac: [0xff; 6], ..app2 }, TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &broadcast).verdict, TC_ACT_SHOT, "a broadcast frame for app2's address");
    assert_eq!(l.counter(Stat::DropNotForApp), before + 2);
    assert!(l.maps.flows().is_empty(), "no entry made at app1's port for app2's flow: {:?}", l.maps.flows());
    // What is app1's is judged as before: its own frame, a broadcast to the subnet.
    let own = frame::ipv4(PROTO_TCP, gateway, l.app(22), TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &own).verdict, TC_ACT_OK, "the gateway reaches app1");
    let subnet = End { mac: [0xff; 6], ip: Ipv4Addr::new(10, 10, 1, 255), port: 9 };
    l.run(prog_names::APP_PORT_TO_APP, &frame::ipv4(PROTO_UDP, gateway, subnet, 0, b"all"));
    assert_eq!(l.counter(Stat::DropNotForApp), before + 2, "app1's frames are not another port's");
}

/// A switch NI's port learns its app's address from the DHCP server outside; a "reply"
/// that another app of the NI sends (from its port) would give the app any address, a
/// neighbour's too, and the port would then drop the app's own packets or let it speak
/// as that neighbour.
#[test]
fn a_switch_port_learns_its_apps_address_only_from_outside() {
    let l = Loaded::new();
    let key = IfaceKey { zone: l.zone, ifindex: LOOPBACK };
    let mut info = l.maps.port(key).unwrap();
    info.flags = (info.flags | IFACE_FLAG_SWITCH | IFACE_FLAG_IP_LEARN) & !IFACE_FLAG_IP_KNOWN;
    info.app_ip = [0; 4];
    let mut maps = Maps::open(&l.pins.0).unwrap();
    maps.set_port(key, info).unwrap();
    let offer = |yiaddr: [u8; 4]| {
        let mut bootp = vec![0u8; 240];
        bootp[0] = 2;
        bootp[16..20].copy_from_slice(&yiaddr);
        bootp[28..34].copy_from_slice(&l.port.mac);
        let server = End { mac: GATEWAY_MAC, ip: Ipv4Addr::new(192, 168, 3, 1), port: 67 };
        frame::ipv4(PROTO_UDP, server, End { mac: [0xff; 6], ip: Ipv4Addr::BROADCAST, port: 68 }, 0, &bootp)
    };
    let learned = |l: &Loaded| {
        let info = l.maps.port(key).unwrap();
        (info.flags & IFACE_FLAG_IP_KNOWN != 0).then_some(info.app_ip)
    };
    // From another app's port (app1's own here: any registered port).
    l.run_from(prog_names::APP_PORT_TO_APP, &offer([192, 168, 3, 66]), LOOPBACK);
    assert_eq!(learned(&l), None, "an app's reply teaches the port nothing");
    // From outside (the uplink: a port of no app).
    l.run_from(prog_names::APP_PORT_TO_APP, &offer([192, 168, 3, 21]), 77);
    assert_eq!(learned(&l), Some([192, 168, 3, 21]), "the server's reply gives the app its address");
}

/// How many conntrack entries the programs have counted against app1's NI (ZONEUSE_V1;
/// the agent's sweep would write the true count back, and none runs here).
fn ct_counted(l: &Loaded) -> u32 {
    let data = MapData::from_pin(l.pins.0.join(map_names::ZONE_USE)).unwrap();
    let zone_use: Array<MapData, ZoneUse> = Array::try_from(Map::Array(data)).unwrap();
    zone_use.get(&l.zone, 0).unwrap().ct
}

/// A SYN that reopens a closed flow's entry (a client's port come round again, as wrk's
/// do at thousands of connections a second) replaces that entry: its NI's share counts
/// the tuple once. Counted again, a client's reused ports drove the count up to
/// "pressed" (the agent sweeping every second) and on to refusing flows, while the map
/// held no more entries than before.
#[test]
fn a_reopened_flow_takes_no_more_of_its_nis_share() {
    let l = Loaded::new();
    let web = remote([10, 99, 0, 10], 80);
    let before = ct_counted(&l);
    let syn = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_SYN, b"");
    for round in 0..3 {
        assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &syn).verdict, TC_ACT_OK, "round {round}: the SYN");
        // The entry is the new flow's (rewritten in place when the tuple closed): its
        // counts start again, and its state is the SYN's, not the closing one's.
        let flows = l.maps.flows();
        assert_eq!(flows.len(), 1, "round {round}: one entry");
        let (packets, state) = (flows[0].1.packets, flows[0].1.tcp_state);
        assert_eq!((packets, ct::tcp_state_name(state)), ([1, 0], "SYN_SENT"), "round {round}: the flow made anew");
        let fin = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_FIN | TCP_ACK, b"");
        assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &fin).verdict, TC_ACT_OK, "round {round}: the app's FIN");
        let server_fin = frame::ipv4(PROTO_TCP, web, l.app(40000), TCP_FIN | TCP_ACK, b"");
        assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &server_fin).verdict, TC_ACT_OK, "round {round}: the server's FIN");
        assert_eq!(ct_counted(&l), before + 1, "round {round}: the tuple counts once");
    }
    assert_eq!(l.counter(Stat::CtNew), 3, "each SYN made the flow anew");
    assert_eq!(l.maps.flows().len(), 1, "under one entry");
    // A flow on a tuple of its own takes its entry from the share.
    let other = frame::ipv4(PROTO_TCP, l.app(40001), web, TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &other).verdict, TC_ACT_OK);
    assert_eq!(ct_counted(&l), before + 2, "a new tuple counts");
}

/// A flow whose entry a new flow on its tuple takes before the flow's end went out (the
/// far end's SYN after the app's FIN, a packet after the entry expired) ends on record
/// then, with its final counters: the sweep, which ends the others, never sees it go.
/// (The app's own SYN there waits for the far end's answer on the flow's entry: see
/// `ct::reopened_by`.) The far end is the NI's gateway, which may start a flow to an app.
#[test]
fn a_flow_whose_entry_a_new_flow_takes_ends_on_record() {
    let l = Loaded::new();
    let gateway = remote([10, 10, 1, 1], 53);
    for flags in [TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK] {
        let packet = frame::ipv4(PROTO_TCP, l.app(40000), gateway, flags, b"data");
        assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &packet).verdict, TC_ACT_OK);
    }
    let own_syn = frame::ipv4(PROTO_TCP, l.app(40000), gateway, TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &own_syn).verdict, TC_ACT_OK);
    assert_eq!(l.maps.flows()[0].1.packets, [4, 0], "the app's SYN on its half-closed flow: that flow's packet");
    let far_syn = frame::ipv4(PROTO_TCP, gateway, l.app(40000), TCP_SYN, b"data");
    assert_eq!(l.run(prog_names::APP_PORT_TO_APP, &far_syn).verdict, TC_ACT_OK);
    let events = l.events();
    let seen: Vec<(u8, [u64; 2])> = events.iter().map(|e| (e.kind, e.value.packets)).collect();
    assert_eq!(
        seen,
        [(EVENT_START, [1, 0]), (EVENT_REPLACED, [4, 0]), (EVENT_START, [1, 0])],
        "the first flow starts, ends with its four packets when the far end's SYN takes its tuple, and the second starts"
    );
    assert_eq!(events[1].value.first_seen_ns, events[0].value.first_seen_ns, "the end is the first flow's");
}

/// An agent killed while it wrote an ACL leaves entries under an id with no shape (the
/// shape goes in last, so no search reads them). The next agent must not write an ACL
/// under that id, where the search would read them with it, and its first cleanup takes
/// them out; the live ACL stays.
#[test]
fn entries_a_killed_agent_left_under_an_id_with_no_shape_go_and_their_id_is_not_reused() {
    let l = Loaded::new();
    let key = IfaceKey { zone: l.zone, ifindex: LOOPBACK };
    let live = l.maps.port(key).unwrap().acl_id;
    // What the killed agent wrote of ACL `live + 1` before it died: a protocol entry
    // saying every ACE of chunk 0 takes UDP.
    let orphan = live + 1;
    let data = MapData::from_pin(l.pins.0.join(map_names::ACL_PROTO)).unwrap();
    let mut proto: HashMap<MapData, ProtoBitsKey, Bits> = HashMap::try_from(Map::HashMap(data)).unwrap();
    proto
        .insert(ProtoBitsKey { acl: orphan, chunk: 0, proto: PROTO_UDP as u16, in_eidset: 0 }, Bits { words: [u64::MAX; CHUNK_WORDS] }, 0)
        .unwrap();

    // The next agent opens the maps and writes the port's ACL anew, then switches to it.
    let mut maps = Maps::open(&l.pins.0).unwrap();
    let id = maps.write_acl(&l.port.acl, 0).unwrap();
    assert!(id > orphan, "the new ACL's id {id} must not be the orphaned entries' {orphan}");
    let mut info = maps.port(key).unwrap();
    info.acl_id = id;
    maps.set_port(key, info).unwrap();
    assert_eq!(maps.remove_unnamed_acls(), 2, "the replaced ACL and the orphaned id");
    assert!(proto.keys().flatten().all(|k| k.acl != orphan), "the orphaned entry went");
    assert!(maps.acls.shape(id).is_some() && maps.acls.shape(live).is_none(), "the port's ACL stays, the one it replaced went");
    let web = remote([10, 99, 0, 10], 80);
    let syn = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_SYN, b"");
    assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &syn).verdict, TC_ACT_OK, "the new ACL judges: ACE 1 allows");
}

/// The verifier refuses a program once it has processed 1M instructions, and 6.1's
/// verifier prunes less than 6.18's (the from-app program with its fast path inside took
/// 840k there, 400k here; apart, 466k and 363k there). Each program must stay under 90% of
/// the limit on the kernel it runs on, so that a change which nears it fails here, with
/// the figures, before a device's kernel refuses the program.
#[test]
fn every_program_leaves_the_verifier_a_tenth_of_its_limit() {
    let l = Loaded::new();
    let verified = l.programs.verified();
    assert_eq!(verified.len(), 5, "the five programs: {verified:?}");
    let ceiling = datapath::VERIFIER_INSN_LIMIT / 10 * 9;
    // The figures, for the log of a run that passes too (`--nocapture`).
    println!("verified instructions: {verified:?}");
    for program in verified {
        let instructions = program.instructions.unwrap_or_else(|| panic!("the kernel did not count {}: {verified:?}", program.name));
        assert!(instructions > 0, "{verified:?}");
        assert!(instructions < ceiling, "{} took the verifier {instructions} instructions, over {ceiling}: {verified:?}", program.name);
    }
}

/// A 10,000-ACE ACL, the deciding ACE at position 1, 5,000 and 10,000, each ACL written
/// beside the live one and switched in by the port's entry; a host ACE at 2,501 decides
/// once the host set names the remote for it, and only before the bitmaps' answer.
#[test]
fn ten_thousand_aces_decide_by_position_and_swap_whole() {
    let mut l = Loaded::new();
    let key = IfaceKey { zone: l.zone, ifindex: LOOPBACK };
    let other = |i: u32| Ace {
        id: i + 1,
        matches: acl::MATCH_IP | acl::MATCH_PROTO,
        prefix: [172, 16, (i >> 8) as u8, i as u8],
        prefix_len: 32,
        proto: PROTO_TCP,
        action: acl::ACTION_DROP,
        ..Ace::default()
    };
    let site = [10, 9, 3, 4];
    let mut sport = 41000;
    // A new flow's verdict, and the mark its record has (a dropped packet leaves none on
    // the skb).
    let mut syn = |l: &Loaded| {
        sport += 1;
        let ran = l.run(prog_names::APP_PORT_FROM_APP, &frame::ipv4(PROTO_TCP, l.app(sport), remote(site, 443), TCP_SYN, b""));
        let flows = l.maps.flows();
        let (_, flow) = flows.iter().find(|(k, _)| k.port_a == sport || k.port_b == sport).expect("the flow is on record");
        (ran.verdict, flow.mark)
    };
    for at in [0u32, 4999, 9999] {
        let mut aces: Vec<Ace> = (0..10_000).map(other).collect();
        let target = acl::MATCH_IP | acl::MATCH_PROTO | acl::MATCH_FPORT;
        aces[at as usize] =
            Ace { id: at + 1, matches: target, prefix: [10, 9, 0, 0], prefix_len: 16, proto: PROTO_TCP, fport: 443, ..Ace::default() };
        aces[2500] = Ace { id: 2501, matches: acl::MATCH_HOST, action: acl::ACTION_DROP, ..Ace::default() };
        let live = l.maps.port(key).unwrap();
        let acl_id = l.maps.write_acl(&aces, 0).unwrap();
        l.maps.set_port(key, IfaceInfo { acl_id, ..live }).unwrap();
        l.maps.acls.remove(live.acl_id);
        assert!(l.maps.acls.shape(live.acl_id).is_none(), "the replaced ACL is gone");
        l.maps.hosts.remove_port(key);

        assert_eq!(syn(&l), (TC_ACT_OK, mark::compose(l.port.app_num, at + 1, true, false)), "ACE {} decides", at + 1);
        // DNS gave the remote for the host ACE (the first host ACE: bit 0).
        l.maps.hosts.add(HostKey { zone: l.zone, ifindex: LOOPBACK, addr: site }, 1, u64::MAX).unwrap();
        let (verdict, id, drop) = if at < 2500 { (TC_ACT_OK, at + 1, false) } else { (TC_ACT_SHOT, 2501, true) };
        assert_eq!(syn(&l), (verdict, mark::compose(l.port.app_num, id, true, drop)), "host ACE vs ACE {}", at + 1);
        // Only the live ACL's entries are left (the replaced ones went, walked or not).
        assert_eq!(l.maps.acls.entries(), classify::compile(acl_id, &aces, 0).entries(), "ACL {acl_id}");
    }
}

/// The programs read only the chunks an ACL's summary names: with the bench's ACL (9,999
/// drops of one remote's ports, then "allow the rest"), a flow to another port is
/// allowed by ACE 10,000 and one to a dropped port by its drop, both through the
/// summary; once the port summary names no chunk for the first flow's port, its next
/// flow finds no ACE (default drop): the kernel skipped every chunk the summary left out.
#[test]
fn the_search_reads_only_the_chunks_the_summary_names() {
    let mut l = Loaded::new();
    let key = IfaceKey { zone: l.zone, ifindex: LOOPBACK };
    let site = [10, 9, 0, 1];
    let drop = |i: u32| Ace {
        id: i + 1,
        matches: acl::MATCH_IP | acl::MATCH_PROTO | acl::MATCH_FPORT,
        prefix: site,
        prefix_len: 32,
        proto: PROTO_TCP,
        fport: 20_000 + i as u16,
        action: acl::ACTION_DROP,
        ..Ace::default()
    };
    let mut aces: Vec<Ace> = (0..9_999).map(drop).collect();
    aces.push(Ace { id: 10_000, ..Ace::default() });
    let live = l.maps.port(key).unwrap();
    let acl_id = l.maps.write_acl(&aces, 0).unwrap();
    l.maps.set_port(key, IfaceInfo { acl_id, ..live }).unwrap();
    let mut sport = 42000;
    let mut syn = |l: &Loaded, port: u16| {
        sport += 1;
        let ran = l.run(prog_names::APP_PORT_FROM_APP, &frame::ipv4(PROTO_TCP, l.app(sport), remote(site, port), TCP_SYN, b""));
        let flows = l.maps.flows();
        let flow = flows.iter().find(|(k, _)| k.port_a == sport || k.port_b == sport).map(|(_, f)| f.mark);
        (ran.verdict, flow)
    };
    let decided = |id: u32, drop: bool| Some(mark::compose(l.port.app_num, id, true, drop));
    assert_eq!(syn(&l, 443), (TC_ACT_OK, decided(10_000, false)), "the last ACE allows");
    assert_eq!(syn(&l, 27_000), (TC_ACT_SHOT, decided(7_001, true)), "ACE 7,001 drops");

    // Every leaf of the port summary: no chunk for any port.
    let pinned = MapData::from_pin(l.pins.0.join(map_names::ACL_SUMMARY)).unwrap();
    let mut summary: HashMap<MapData, SummaryKey, SummaryPage> = HashMap::try_from(Map::HashMap(pinned)).unwrap();
    let leaves: Vec<(SummaryKey, SummaryPage)> =
        summary.iter().flatten().filter(|(k, _)| k.acl == acl_id && k.field == classify::FIELD_PORT && k.page > 0).collect();
    assert!(!leaves.is_empty(), "the ACL has a port summary");
    for (k, mut page) in leaves {
        page.values = [0; classify::summary::SUMMARY_SLOTS];
        summary.insert(k, page, 0).unwrap();
    }
    let drops = l.counter(Stat::DropAcl);
    assert_eq!(syn(&l, 443).0, TC_ACT_SHOT, "no chunk read: no ACE decides");
    assert_eq!(l.counter(Stat::DropAcl), drops + 1, "dropped by the ACL");
}

/// (packets, bytes) per direction (`PORT_DIR_*`).
type PerDirection = [(u64, u64); 2];

/// What app1's port passed and dropped.
fn port_counts(l: &Loaded) -> (PerDirection, PerDirection) {
    let key = IfaceKey { zone: l.zone, ifindex: LOOPBACK };
    let (_, c) = l.maps.port_counters().into_iter().find(|(k, _)| *k == key).expect("the port has counters");
    let per = |p: [u64; 2], b: [u64; 2]| [(p[0], b[0]), (p[1], b[1])];
    (per(c.passed_packets, c.passed_bytes), per(c.dropped_packets, c.dropped_bytes))
}

#[test]
fn lies_from_the_app_are_dropped_and_counted() {
    let l = Loaded::new();
    let web = remote([10, 99, 0, 10], 80);
    let syn = frame::ipv4(PROTO_TCP, l.app(40000), web, TCP_SYN, b"");
    // (The kernel refuses a test frame whose IPv4 header is cut short: lies inside it.)
    let with_ip_byte = |at: usize, value: u8| {
        let mut f = syn.clone();
        f[frame::ETH_LEN + at] = value;
        f
    };
    let cases: [(&str, Vec<u8>, Stat); 4] = [
        (
            "a neighbour's address",
            frame::ipv4(PROTO_TCP, End { ip: Ipv4Addr::new(10, 10, 1, 9), ..l.app(40000) }, web, TCP_SYN, b""),
            Stat::DropSpoofed,
        ),
        ("another MAC", frame::ipv4(PROTO_TCP, End { mac: [0x02, 9, 9, 9, 9, 9], ..l.app(40000) }, web, TCP_SYN, b""), Stat::DropSpoofed),
        ("a header length under 20 bytes", with_ip_byte(0, 0x44), Stat::DropMalformed),
        ("a total length shorter than the header", with_ip_byte(3, 10), Stat::DropMalformed),
    ];
    for (what, f, stat) in cases {
        let before = l.counter(stat);
        assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &f).verdict, TC_ACT_SHOT, "{what}");
        assert_eq!(l.counter(stat), before + 1, "{what} counts as {}", stat.name());
    }
    assert!(l.maps.flows().is_empty(), "no lie made a conntrack entry");
}

#[test]
fn metadata_requests_go_to_the_gateway_and_answers_come_back_from_the_metadata_address() {
    let l = Loaded::new();
    let metadata = remote([169, 254, 169, 254], 80);
    let get = frame::ipv4(PROTO_TCP, l.app(41000), metadata, TCP_SYN, b"GET / HTTP/1.0\r\n\r\n");
    let ran = l.run(prog_names::APP_PORT_FROM_APP, &get);
    assert_eq!(ran.verdict, TC_ACT_OK);
    assert_eq!(frame::ends(&ran.frame), ((l.port.ip, 41000), (Ipv4Addr::new(10, 10, 1, 1), 80)), "toward the gateway's server");
    assert!(frame::checksums_ok(&ran.frame), "checksums after the rewrite");

    let answer = frame::ipv4(PROTO_TCP, remote([10, 10, 1, 1], 80), l.app(41000), TCP_SYN | TCP_ACK, b"HTTP/1.0 200 OK\r\n");
    let ran = l.run(prog_names::APP_PORT_TO_APP, &answer);
    assert_eq!(ran.verdict, TC_ACT_OK);
    assert_eq!(frame::ends(&ran.frame), ((Ipv4Addr::new(169, 254, 169, 254), 80), (l.port.ip, 41000)), "as from the metadata address");
    assert!(frame::checksums_ok(&ran.frame), "checksums after the rewrite back");

    // An answered connection, idle past an unanswered one's 2 minutes: its translation
    // stays, and the server's next segment still comes from the metadata address.
    let ack = frame::ipv4(PROTO_TCP, l.app(41000), metadata, TCP_ACK, b"");
    assert_eq!(l.run(prog_names::APP_PORT_FROM_APP, &ack).verdict, TC_ACT_OK);
    let mut maps = Maps::open(&l.pins.0).unwrap();
    maps.expire_flows(datapath::monotonic_ns() + 130 * 1_000_000_000);
    let later = frame::ipv4(PROTO_TCP, remote([10, 10, 1, 1], 80), l.app(41000), TCP_FIN | TCP_ACK, b"");
    let ran = l.run(prog_names::APP_PORT_TO_APP, &later);
    assert_eq!(frame::ends(&ran.frame).0, (Ipv4Addr::new(169, 254, 169, 254), 80), "the server's close, 130 s on");
}

/// The NI side of the NI veth as the agent writes it (`reconcile::uplink::ni_side_nat` and
/// the NI's port maps), here on loopback: the NI subnet leaves as the NI veth's address
/// (but toward the agent side), and a port map leads to the app with its ACE's mark.
fn translating(l: &mut Loaded) {
    let ni = &l.ni;
    let subnet = (ni.subnet.network().octets(), ni.subnet.prefix_len());
    let nif = NatIface::new(ni.ni_ip.octets(), subnet, ni.agent_ip.octets(), 0, l.nat_ports);
    l.maps.set_nat_iface(IfaceKey { zone: l.zone, ifindex: LOOPBACK }, nif).unwrap();
    assert_eq!(ni.portmaps.len(), 1, "ACE 3's port map");
    for pm in &ni.portmaps {
        let key = PortmapKey { domain: l.zone, addr: ni.ni_ip.octets(), port: pm.lport, proto: pm.proto, _pad: 0 };
        let target = PortmapTarget { addr: pm.app_ip.octets(), port: pm.target, _pad: 0, mark: pm.mark, uplink_ifindex: 0 };
        l.maps.set_portmap(key, target).unwrap();
    }
}

/// The NI veth's translation as `translating` makes it, but with one port (`port`): a
/// second flow to the same remote gets none, a flow to another gets the same.
fn translating_with_one_port(maps: &mut Maps, ni: &NiPlan, zone: u32, port: u16) {
    let subnet = (ni.subnet.network().octets(), ni.subnet.prefix_len());
    let one_port = NatIface::new(ni.ni_ip.octets(), subnet, ni.agent_ip.octets(), 0, (port, port));
    maps.set_nat_iface(IfaceKey { zone, ifindex: LOOPBACK }, one_port).unwrap();
}

#[test]
fn source_nat_rewrites_both_ways_with_right_checksums() {
    let mut l = Loaded::new();
    translating(&mut l);
    let dns = remote([10, 99, 0, 53], 53);
    let (ni_ip, (port_min, port_max)) = (l.ni.ni_ip, l.nat_ports);
    let mut ports = Vec::new();
    for (proto, sport) in [(PROTO_UDP, 5000), (PROTO_TCP, 5000), (PROTO_UDP, 5001)] {
        let out = frame::ipv4(proto, l.app(sport), dns, TCP_SYN, b"query");
        let ran = l.run(prog_names::NAT_EGRESS, &out);
        assert_eq!(ran.verdict, TC_ACT_OK);
        let ((src, port), dst) = frame::ends(&ran.frame);
        assert_eq!(src, ni_ip, "the NI veth's address");
        assert!((port_min..=port_max).contains(&port), "a port of the range: {port}");
        assert_eq!(dst, (dns.ip, 53), "the destination stays");
        assert!(frame::checksums_ok(&ran.frame), "checksums after the source rewrite");
        ports.push((proto, port));

        let reply = frame::ipv4(proto, dns, End { mac: GATEWAY_MAC, ip: src, port }, TCP_SYN | TCP_ACK, b"answer");
        let ran = l.run(prog_names::NAT_INGRESS, &reply);
        assert_eq!(ran.verdict, TC_ACT_OK);
        assert_eq!(frame::ends(&ran.frame), ((dns.ip, 53), (l.port.ip, sport)), "the reply reaches the app's own end");
        assert!(frame::checksums_ok(&ran.frame), "checksums after the rewrite back");
    }
    assert_ne!(ports[0], ports[2], "two UDP flows, two translations");
    assert_eq!(l.counter(Stat::NatNew), 3);

    // Toward the agent side nothing is translated (replies to EVE-initiated flows).
    let to_agent = frame::ipv4(PROTO_UDP, l.app(5002), remote(l.ni.agent_ip.octets(), 9999), 0, b"x");
    let ran = l.run(prog_names::NAT_EGRESS, &to_agent);
    assert_eq!((ran.verdict, &ran.frame), (TC_ACT_OK, &to_agent));
}

/// A TCP translation lives as long as its flow: 5 days once answered, 2 minutes once
/// closing. A flow on a closed flow's tuple takes that translation again and must get
/// the 5 days back: its reply half sees the server's SYN-ACK, never a bare SYN, and kept
/// the old flow's FIN, so an idle connection on a reused tuple lost its translation
/// after 2 minutes (its next packet left by another port, which the server refuses).
#[test]
fn a_reused_tuples_translation_lives_as_long_as_its_new_flow() {
    let mut l = Loaded::new();
    translating(&mut l);
    let web = remote([10, 99, 0, 10], 80);
    let out = |l: &Loaded, flags: u8| {
        let ran = l.run(prog_names::NAT_EGRESS, &frame::ipv4(PROTO_TCP, l.app(40000), web, flags, b""));
        assert_eq!(ran.verdict, TC_ACT_OK);
        frame::ends(&ran.frame).0
    };
    let (ni_ip, port) = out(&l, TCP_SYN);
    assert_eq!(ni_ip, l.ni.ni_ip, "translated");
    let back = |l: &Loaded, flags: u8| {
        let ran = l.run(prog_names::NAT_INGRESS, &frame::ipv4(PROTO_TCP, web, End { mac: GATEWAY_MAC, ip: ni_ip, port }, flags, b""));
        assert_eq!(ran.verdict, TC_ACT_OK);
        frame::ends(&ran.frame).1
    };
    let app = (l.port.ip, 40000);
    // The first flow: answered, then closed each way.
    assert_eq!(back(&l, TCP_SYN | TCP_ACK), app);
    out(&l, TCP_ACK);
    out(&l, TCP_FIN | TCP_ACK);
    back(&l, TCP_FIN | TCP_ACK);
    out(&l, TCP_ACK);
    // The same tuple again: the same translation, answered, then idle.
    assert_eq!(out(&l, TCP_SYN), (ni_ip, port), "the closed flow's translation, taken again");
    assert_eq!(back(&l, TCP_SYN | TCP_ACK), app);
    out(&l, TCP_ACK);
    let sweep = l.maps.expire_flows(datapath::monotonic_ns() + 180 * 1_000_000_000);
    assert_eq!(sweep.removed, 0, "idle 3 minutes, past a closing flow's 2: the open flow's translation stays");
    assert_eq!(back(&l, TCP_ACK), app, "the server's next segment still reaches the app");
}

/// Loopback as both interfaces that translate a flow leaving an NI: the NI veth (zone
/// `l.zone`, as `translating` makes it) and the uplink (the agent's domain, `UPLINK_IP`),
/// which the NI's fast path leads to; `in_zone` says which it is for the next run.
struct TwoNats {
    if_zones: HashMap<MapData, u32, u32>,
}

const UPLINK_IP: [u8; 4] = [192, 168, 0, 2];

impl TwoNats {
    fn new(l: &mut Loaded) -> TwoNats {
        let if_zones = MapData::from_pin(l.pins.0.join(map_names::IF_ZONES)).unwrap();
        let if_zones = HashMap::try_from(Map::HashMap(if_zones)).unwrap();
        // (Written past `Maps`, which refuses one ifindex in two zones, as it must.)
        let nat_ifaces = MapData::from_pin(l.pins.0.join(map_names::NAT_IFACES)).unwrap();
        let mut nat_ifaces: HashMap<MapData, IfaceKey, NatIface> = HashMap::try_from(Map::HashMap(nat_ifaces)).unwrap();
        let uplink = NatIface::new(UPLINK_IP, (VETH_NET, 24), [0; 4], LOOPBACK, l.nat_ports);
        nat_ifaces.insert(IfaceKey { zone: DOMAIN_AGENT, ifindex: LOOPBACK }, uplink, 0).unwrap();
        let subnet = l.ni.subnet;
        let fz = FastZone {
            enabled: 1,
            ni_veth_ifindex: LOOPBACK,
            agent_veth_ifindex: LOOPBACK,
            subnet_len: subnet.prefix_len(),
            subnet: subnet.network().octets(),
            ..FastZone::default()
        };
        l.maps.set_fast_zone(l.zone, fz).unwrap();
        TwoNats { if_zones }
    }

    /// `Loaded`, `translating` with one NI port (`port`: a second flow to the same remote
    /// gets none, a flow to another the same), and `TwoNats`.
    fn with_one_ni_port(port: u16) -> (Loaded, TwoNats) {
        let mut l = Loaded::new();
        translating(&mut l);
        translating_with_one_port(&mut l.maps, &l.ni, l.zone, port);
        let two = TwoNats::new(&mut l);
        (l, two)
    }

    fn in_zone(&mut self, zone: u32) {
        self.if_zones.insert(LOOPBACK, zone, 0).unwrap();
    }

    /// A TCP packet (`flags`) from `from` in the NI to `to`, through the NI veth's egress
    /// and the uplink's: where it leaves each from.
    fn leave(&mut self, l: &Loaded, from: End, to: End, flags: u8) -> (End, End) {
        let mut hop = |zone: u32, from: End| {
            self.in_zone(zone);
            let ran = l.run(prog_names::NAT_EGRESS, &frame::ipv4(PROTO_TCP, from, to, flags, b""));
            assert_eq!(ran.verdict, TC_ACT_OK);
            let (ip, port) = frame::ends(&ran.frame).0;
            End { mac: GATEWAY_MAC, ip, port }
        };
        let ni_end = hop(l.zone, from);
        (ni_end, hop(DOMAIN_AGENT, ni_end))
    }

    /// A TCP packet (`flags`) from `from` to `to` at the uplink's ingress: the verdict and
    /// the destination it is given.
    fn back(&mut self, l: &Loaded, from: End, to: End, flags: u8) -> (u32, (Ipv4Addr, u16), Ran) {
        self.in_zone(DOMAIN_AGENT);
        let ran = l.run(prog_names::NAT_INGRESS, &frame::ipv4(PROTO_TCP, from, to, flags, b""));
        (ran.verdict, frame::ends(&ran.frame).1, ran)
    }
}

/// A reply at the uplink whose translation there carries its NI's is translated back to
/// the app's address and port in one go (the fast path hands it into the NI marked, and
/// the NI veth's program skips its lookup): the NI's reply half then sees none of the
/// flow's replies, and the sweep judges the flow's two pairs as one. Judged alone, the
/// NI's pair was an unanswered translation, and went 2 minutes after the flow began; the
/// app's next packet got another translation and another port, which the server refuses.
#[test]
fn a_reply_translated_at_the_uplink_through_both_keeps_the_flows_translations() {
    let mut l = Loaded::new();
    translating(&mut l);
    let mut two = TwoNats::new(&mut l);
    let web = remote([10, 99, 0, 10], 80);
    let (_, to_uplink) = two.leave(&l, l.app(40000), web, TCP_SYN);
    assert_eq!(to_uplink.ip, Ipv4Addr::from(UPLINK_IP), "translated at the uplink too");
    let (done, rewrites) = (l.counter(Stat::FastNiNatDone), l.counter(Stat::NatRewrite));
    let (verdict, to, ran) = two.back(&l, web, to_uplink, TCP_SYN | TCP_ACK);
    assert_eq!((verdict, to), (TC_ACT_REDIRECT, (l.port.ip, 40000)), "translated back to the app at the uplink, into the NI");
    assert_eq!(ran.mark, NI_NAT_DONE_MARK, "marked for the NI veth's program");
    assert_eq!((l.counter(Stat::FastNiNatDone), l.counter(Stat::NatRewrite)), (done + 1, rewrites + 2), "both translations counted");
    assert!(frame::checksums_ok(&ran.frame), "checksums whole after both rewrites");
    two.leave(&l, l.app(40000), web, TCP_ACK);

    let nat = |sweep: &datapath::Sweep| sweep.fill.iter().find(|f| f.map == map_names::NAT).unwrap().entries;
    let sweep = l.maps.expire_flows(datapath::monotonic_ns() + 180 * 1_000_000_000);
    assert_eq!((sweep.removed, nat(&sweep)), (0, 4), "idle 3 minutes, answered: both pairs stay");
    assert_eq!(two.back(&l, web, to_uplink, TCP_ACK).1, (l.port.ip, 40000), "the server's next segment still reaches the app");
    let sweep = l.maps.expire_flows(datapath::monotonic_ns() + 6 * 24 * 3600 * 1_000_000_000);
    assert_eq!((sweep.removed, nat(&sweep)), (4, 0), "idle 6 days: both pairs go, together");
}

/// A flow whose translation in its NI is gone while the uplink's stays (an LRU eviction,
/// or a sweep that judged the two pairs apart): a new flow given the same NI port gets a
/// translation of its own at the uplink. It took the gone flow's, whose reply half
/// carries that flow's app, and its replies were translated back to that app.
#[test]
fn a_new_flow_on_a_gone_flows_ni_port_gets_its_own_uplink_translation() {
    // One port at the NI veth: the new flow gets the gone flow's.
    let (mut l, mut two) = TwoNats::with_one_ni_port(50000);
    let web = remote([10, 99, 0, 10], 80);
    let (ni_end, old) = two.leave(&l, l.app(40000), web, TCP_SYN);
    assert_eq!(two.back(&l, web, old, TCP_SYN | TCP_ACK).1, (l.port.ip, 40000));
    let zone = l.zone;
    assert_eq!(l.maps.remove_nat_entries(|k, _| k.domain == zone), 2, "the NI's pair gone");

    let (same, new) = two.leave(&l, l.app(40001), web, TCP_SYN);
    assert_eq!((same.ip, same.port), (ni_end.ip, ni_end.port), "the same NI port");
    assert_ne!(new.port, old.port, "a translation of its own at the uplink");
    assert_eq!(two.back(&l, web, new, TCP_SYN | TCP_ACK).1, (l.port.ip, 40001), "its replies reach it");
    let (verdict, to, _) = two.back(&l, web, old, TCP_ACK);
    assert_eq!((verdict, to), (TC_ACT_OK, (old.ip, old.port)), "nothing reaches the gone flow's app by its uplink port");
}

/// A translation at the uplink of a flow the NI's netns itself sends from its veth's
/// address (its own services) carries no app: a new app flow given the same NI port
/// leaves it alone (it is no gone flow's).
#[test]
fn the_nis_own_flow_keeps_its_uplink_translation() {
    let (l, mut two) = TwoNats::with_one_ni_port(4500);
    let peer = remote([10, 99, 0, 20], 4500);
    let service = End { mac: GATEWAY_MAC, ip: l.ni.ni_ip, port: 4500 };
    two.in_zone(DOMAIN_AGENT);
    let ran = l.run(prog_names::NAT_EGRESS, &frame::ipv4(PROTO_TCP, service, peer, TCP_SYN, b""));
    let (up_ip, up_port) = frame::ends(&ran.frame).0;
    let (ni_end, _) = two.leave(&l, l.app(40000), peer, TCP_SYN);
    assert_eq!((ni_end.ip, ni_end.port), (service.ip, service.port), "the app's flow takes the NI port the service sends from");
    let (_, to, _) = two.back(&l, peer, End { mac: GATEWAY_MAC, ip: up_ip, port: up_port }, TCP_ACK);
    assert_eq!(to, (service.ip, service.port), "the service's answers still reach it");
}

/// A translation's two entries go together: the sweep takes them one by one, and judged
/// an entry whose partner it had taken alone, by its own flags. A reply half whose flow
/// only the app aborted (its RST on the original half) then counted as answered and open:
/// 5 days, not 2 minutes, and the next sweeps judged it alone again, while it held the
/// NI's share (port-mapped health checks, SYN in and RST out, filled it in days).
#[test]
fn an_aborted_flows_translation_goes_whole() {
    let mut l = Loaded::new();
    translating(&mut l);
    let web = remote([10, 99, 0, 10], 80);
    for sport in 41000..41016 {
        let out = |l: &Loaded, flags: u8| {
            let ran = l.run(prog_names::NAT_EGRESS, &frame::ipv4(PROTO_TCP, l.app(sport), web, flags, b""));
            assert_eq!(ran.verdict, TC_ACT_OK);
            frame::ends(&ran.frame).0
        };
        let (ni_ip, port) = out(&l, TCP_SYN);
        let answer = frame::ipv4(PROTO_TCP, web, End { mac: GATEWAY_MAC, ip: ni_ip, port }, TCP_SYN | TCP_ACK, b"");
        assert_eq!(l.run(prog_names::NAT_INGRESS, &answer).verdict, TC_ACT_OK);
        out(&l, TCP_ACK);
        out(&l, TCP_RST | TCP_ACK);
    }
    let sweep = l.maps.expire_flows(datapath::monotonic_ns() + 180 * 1_000_000_000);
    let nat = sweep.fill.iter().find(|f| f.map == map_names::NAT).unwrap();
    assert_eq!((sweep.removed, nat.entries), (32, 0), "idle 3 minutes after an RST: all 16 translations go, both halves each");
}

/// A later fragment whose first fragment was refused a translation (no port left, or no
/// share) is dropped at the egress that would have translated it: passed as it came, it
/// left with the address the translation hides (at the uplink, the NI veth's).
#[test]
fn a_later_fragment_of_a_datagram_refused_a_translation_is_dropped() {
    let l = Loaded::new();
    let mut maps = Maps::open(&l.pins.0).unwrap();
    translating_with_one_port(&mut maps, &l.ni, l.zone, 50000);
    let dns = remote([10, 99, 0, 53], 53);
    let takes_the_port = frame::ipv4(PROTO_UDP, l.app(5000), dns, 0, b"query");
    assert_eq!(l.run(prog_names::NAT_EGRESS, &takes_the_port).verdict, TC_ACT_OK);
    let datagram = frame::ipv4(PROTO_UDP, l.app(5001), dns, 0, &[7; 64]);
    let refused = l.counter(Stat::NatNoPort);
    assert_eq!(l.run(prog_names::NAT_EGRESS, &frame::fragment(&datagram, 0, true)).verdict, TC_ACT_SHOT, "no port for it");
    assert_eq!(l.counter(Stat::NatNoPort), refused + 1);
    let later = frame::fragment(&datagram, 1, false);
    let ran = l.run(prog_names::NAT_EGRESS, &later);
    assert_eq!((ran.verdict, frame::ends(&ran.frame).0 .0), (TC_ACT_SHOT, l.port.ip), "the later fragment, untranslated, stays");
}

#[test]
fn a_port_map_rewrites_the_destination_and_its_replies_the_source() {
    let mut l = Loaded::new();
    translating(&mut l);
    let pm = l.ni.portmaps[0].clone();
    let ni_ip = l.ni.ni_ip;
    // Port-mapped flows reach the NI veth from the agent side's address.
    let client = remote(l.ni.agent_ip.octets(), 33333);
    let syn = frame::ipv4(PROTO_TCP, client, End { mac: GATEWAY_MAC, ip: ni_ip, port: 8080 }, TCP_SYN, b"");
    let ran = l.run(prog_names::NAT_INGRESS, &syn);
    assert_eq!(ran.verdict, TC_ACT_OK);
    assert_eq!(frame::ends(&ran.frame), ((client.ip, 33333), (l.port.ip, 80)), "to the app's port 80");
    assert_eq!(ran.mark, pm.mark, "the exposing ACE's mark, for the app port to let it in: {:#x}", ran.mark);
    assert_eq!(pm.mark, mark::compose(l.port.app_num, 3, true, false));
    assert!(frame::checksums_ok(&ran.frame));
    assert_eq!(l.counter(Stat::PortmapNew), 1);

    let syn_ack = frame::ipv4(PROTO_TCP, l.app(80), client, TCP_SYN | TCP_ACK, b"");
    let ran = l.run(prog_names::NAT_EGRESS, &syn_ack);
    assert_eq!(ran.verdict, TC_ACT_OK);
    assert_eq!(frame::ends(&ran.frame), ((ni_ip, 8080), (client.ip, 33333)), "as from the mapped port");
    assert!(frame::checksums_ok(&ran.frame));

    // Another port is not mapped: passed untouched, nothing made.
    let other = frame::ipv4(PROTO_TCP, client, End { mac: GATEWAY_MAC, ip: ni_ip, port: 8081 }, TCP_SYN, b"");
    let ran = l.run(prog_names::NAT_INGRESS, &other);
    assert_eq!((ran.verdict, &ran.frame), (TC_ACT_OK, &other));
    assert_eq!(l.counter(Stat::PortmapNew), 1);
}
