//! TC programs on an app's bridge port: ingress = packets from the app, egress = packets
//! to the app. Conntrack, ACL verdicts and flow accounting; the metadata address
//! translation (169.254.169.254:80 -> the NI gateway:80).

use core::{
    ffi::c_void,
    intrinsics::{atomic_xadd, AtomicOrdering},
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_loop,
    macros::classifier,
    programs::TcContext,
};
use netns_ebpf_common::{
    acl::{self, Ace, AceQuery, AceWalk, Decided, RemoteFacts, Verdict, METADATA_IP},
    classify::{
        self, AceGroup, AceKey, AclMaps, Bits, HostStep, ProtoBitsKey, RangeKey, RangePage, SummaryKey, SummaryPage, MAX_HOST_ACES,
    },
    ct::{self, CtKey, CtValue, DIR_ORIG, DIR_REPLY, FLAG_ENDED, FLAG_JUDGED_TO_APP, FLAG_SEEN_REPLY, VERDICT_DROP},
    event::{self, EVENT_DROPPED, EVENT_END, EVENT_REPLACED, EVENT_START},
    guard,
    limit::{self, LimitKey},
    nat::{NatKey, NatValue, PortmapKey, CLOCK_SLACK_NS, DOMAIN_AGENT, NAT_FLAG_ORIG, REWRITE_DST, REWRITE_SRC},
    packet::{self, Flow, PacketReader, Parsed, FRAG_LATER, FRAG_NONE, TCP_RST},
    EidKey, HostKey, IfaceInfo, IfaceKey, Stat, IFACE_FLAG_IP_KNOWN, IFACE_FLAG_IP_LEARN, IFACE_FLAG_SWITCH, PORT_DIR_FROM_APP,
    PORT_DIR_TO_APP, PROTO_TCP, VETH_NET, VETH_NET_LEN,
};

use crate::{
    budget, clock, events, fast, frag,
    maps::{
        zone, ACES, ACL_HOSTS, ACL_PROTO, ACL_RANGES, ACL_SHAPES, ACL_SUMMARY, ACL_WALK, CT, DEVICE, DROPS, EIDSET, HOSTSET, IFACES,
        LIMITS, NAT, PORTMAPS, PORT_STATS,
    },
    rewrite,
    skb::{count, ifindex, skb_mark, vlan_tagged, Skb},
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// TC ingress of the bridge port: the packet comes from the app.
    FromApp,
    /// TC egress of the bridge port: the packet goes to the app.
    ToApp,
}

impl Side {
    #[inline(always)]
    fn other(self) -> Side {
        match self {
            Side::FromApp => Side::ToApp,
            Side::ToApp => Side::FromApp,
        }
    }
}

#[classifier]
pub fn app_port_from_app(ctx: TcContext) -> i32 {
    // (Looked up once per packet: the counters below need it too.)
    let zone = zone(&ctx);
    let verdict = handle(&ctx, zone, Side::FromApp);
    count_port(zone, ifindex(&ctx), PORT_DIR_FROM_APP, verdict == TC_ACT_SHOT, ctx.len());
    verdict
}

/// The from-app program's fast path, which it continues in by tail call
/// (`fast::continue_from_app`): a program the verifier checks apart.
#[classifier]
pub fn app_port_from_app_fast(ctx: TcContext) -> i32 {
    let zone = zone(&ctx);
    let verdict = fast::from_app_past_port(&ctx, zone);
    count_port(zone, ifindex(&ctx), PORT_DIR_FROM_APP, verdict == TC_ACT_SHOT, ctx.len());
    verdict
}

#[classifier]
pub fn app_port_to_app(ctx: TcContext) -> i32 {
    let zone = zone(&ctx);
    let verdict = handle(&ctx, zone, Side::ToApp);
    count_port(zone, ifindex(&ctx), PORT_DIR_TO_APP, verdict == TC_ACT_SHOT, ctx.len());
    verdict
}

/// The port's packet and byte counters (the metrics'). Its own BPF function: its key
/// lives in its own frame, not in the from-app frame that 6.1's stack limit binds.
#[inline(never)]
fn count_port(zone: u32, ifindex: u32, dir: usize, dropped: bool, len: u32) {
    if let Some(c) = PORT_STATS.get_ptr_mut(IfaceKey { zone, ifindex }) {
        // Per-CPU entry: no other writer.
        unsafe { (*c).count(dir, dropped, len as u64) };
    }
}

#[inline(always)]
fn handle(ctx: &TcContext, zone: u32, side: Side) -> i32 {
    // No VLANs on app ports: a tagged frame from an app would leave tagged past the
    // bridge (the fast path and a switch NI carry the tag along), into a VLAN of the
    // uplink's network; one toward an app came from such a VLAN.
    if vlan_tagged(ctx) {
        count(Stat::DropNonIpv4);
        return TC_ACT_SHOT;
    }
    match packet::parse(&Skb(ctx)) {
        Ok(Parsed::Ipv4(mut flow)) => handle_ipv4(ctx, zone, side, &mut flow),
        Ok(Parsed::Arp(arp)) => {
            // An app's ARP must name the app itself: no claiming a neighbour's address
            // (or the gateway's) to draw its traffic.
            if side == Side::FromApp {
                let Some(iface) = (unsafe { IFACES.get(&IfaceKey { zone, ifindex: ifindex(ctx) }) }) else {
                    count(Stat::NoIfaceConfig);
                    return TC_ACT_SHOT;
                };
                if let Err(stat) = guard::from_app_arp(iface, &arp) {
                    count(stat);
                    return TC_ACT_SHOT;
                }
            }
            count(Stat::PassArp);
            TC_ACT_OK
        }
        // We configure no IPv6 on NIs: letting it through would bypass the ACL.
        Ok(Parsed::Other(_)) => {
            count(Stat::DropNonIpv4);
            TC_ACT_SHOT
        }
        Err(_) => {
            count(Stat::DropMalformed);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn handle_ipv4(ctx: &TcContext, zone: u32, side: Side, flow: &mut Flow) -> i32 {
    let ifindex = ifindex(ctx);
    let ikey = IfaceKey { zone, ifindex };
    // Fail closed: a port we have no config for passes nothing but ARP.
    let Some(iface) = (unsafe { IFACES.get(&ikey) }) else {
        count(Stat::NoIfaceConfig);
        return TC_ACT_SHOT;
    };
    // A flooded copy of another port's frame is that port's to judge, not this one's
    // (before conntrack sees it: here it would make or use that flow's entry).
    if side == Side::ToApp {
        let dst_mac = Skb(ctx).read::<6>(0).unwrap_or_default();
        let other_app = || unsafe { EIDSET.get(EidKey { zone, addr: flow.outer_dst }) }.is_some();
        if guard::for_another_port(iface, &dst_mac, flow.outer_dst, guard::is_dhcp_reply(flow), other_app) {
            count(Stat::DropNotForApp);
            return TC_ACT_SHOT;
        }
    }
    // Before conntrack sees it: the app sends as itself, and an ICMP error fits the flow
    // it quotes (else it would take that flow's verdict and NAT to any address).
    if side == Side::FromApp {
        if let Err(stat) = guard::from_app_ipv4(iface, flow) {
            count(stat);
            return TC_ACT_SHOT;
        }
        // A DHCP message names its client inside: the app's own MAC, or nothing passes.
        // (Six bytes read, not the BOOTP header: this program's frame is near 6.1's limit.)
        if guard::is_dhcp_client(flow) {
            let chaddr = ctx.load::<[u8; 6]>(flow.l4_off as usize + guard::DHCP_CHADDR_OFFSET).ok();
            if !guard::dhcp_client_is_app(iface, flow.frag, chaddr) {
                count(Stat::DropSpoofed);
                return TC_ACT_SHOT;
            }
        }
    }
    if flow.related && !guard::icmp_error_fits(flow, side == Side::FromApp) {
        count(Stat::DropIcmpMismatch);
        return TC_ACT_SHOT;
    }
    let now = clock::now_ns();
    // A later fragment has no ports of its own: its first fragment's, recorded here.
    if flow.frag != FRAG_NONE && frag::follow(zone, flow, now).is_err() {
        return TC_ACT_SHOT;
    }
    if side == Side::ToApp && acl::is_metadata_answer(iface, flow) && undo_metadata_nat(ctx, zone, flow, now).is_err() {
        count(Stat::NatMalformed);
        return TC_ACT_SHOT;
    }
    let (key, a_to_b) = CtKey::new(zone, flow);
    let found = CT.get_ptr_mut(&key);
    let verdict = match found {
        Some(entry)
            if !ct::is_expired(unsafe { &*entry }, flow.proto, now) && !starts_anew(unsafe { &*entry }, flow, a_to_b, side, ifindex) =>
        {
            let entry = unsafe { &mut *entry };
            // The direction this packet travels in the flow (an ICMP error travels against
            // the packet it quotes).
            let dir = entry.direction(a_to_b != flow.related);
            // An entry belongs to the ports of its flow: another app's packet matching its
            // tuple gets nothing from it (a DHCP request starts anew: `starts_anew`).
            if side == Side::FromApp && !ct::port_may_send(entry, dir, ifindex) {
                count(Stat::DropCtPort);
                return TC_ACT_SHOT;
            }
            if flow.related {
                // An ICMP error about a known flow follows that flow's verdict; it does not
                // change its state or counters.
                return verdict_action(entry.verdict == VERDICT_DROP, Stat::PassCt, Stat::DropCt);
            }
            if rst_refused(entry, dir, flow) {
                return TC_ACT_SHOT;
            }
            if side == Side::ToApp
                && dir == DIR_ORIG
                && entry.flags & FLAG_JUDGED_TO_APP == 0
                && entry.reply_ifindex == 0
                && came_from_app_port(ctx)
            {
                // The first packet of one app's flow to another reaches the far app here:
                // this port is where its replies may come from.
                entry.reply_ifindex = ifindex;
            }
            if entry.judge_ifindex == ifindex
                && entry.acl_id != iface.acl_id
                && entry.acl_id == iface.prev_acl_id
                && acl::decided_alike(entry.decided, iface.kept_aces)
            {
                // The ACL changed, but not where it decided this flow: it stands.
                entry.acl_id = iface.acl_id;
                count(Stat::RejudgeSkipped);
            } else if entry.judge_ifindex == ifindex && entry.acl_id != iface.acl_id {
                // The ACL changed since this flow was judged: judge it again, live, as its
                // first packet was judged: that packet's tuple, from that packet's side
                // (a reply travels the other way, so it is turned around first).
                // (Turned in place, not copied: the program's stack is 512 bytes with the
                // ACE walk's frame, and 6.1's verifier counts every byte.)
                let first_side = if dir == DIR_ORIG { side } else { side.other() };
                if first_side == Side::FromApp || iface.flags & IFACE_FLAG_SWITCH != 0 {
                    if dir != DIR_ORIG {
                        flow.reverse();
                    }
                    let v = judge(ctx, first_side, &ikey, iface, flow);
                    if dir != DIR_ORIG {
                        flow.reverse();
                    }
                    entry.mark = v.mark;
                    entry.verdict = v.drop as u8;
                    entry.limit = v.limit;
                    entry.decided = v.by;
                }
                // Else a flow let into a local NI by a port map or from the agent's netns:
                // no ACE judged it (the agent flushes the flows of a changed port map),
                // its verdict stands.
                entry.acl_id = iface.acl_id;
                count(Stat::Rejudged);
            }
            if counts_here(ctx, side) {
                if flow.proto == PROTO_TCP && entry.verdict != VERDICT_DROP && ct::takes_new_connection(entry, flow.tcp_flags, dir) {
                    renew(&key, entry, now);
                }
                if !charge(zone, &key, entry, dir, flow, now) {
                    return TC_ACT_SHOT;
                }
            }
            verdict_of(entry)
        }
        _ => {
            if flow.related {
                // An ICMP error for no flow we know: nothing asked for it.
                count(Stat::DropUnsolicited);
                return TC_ACT_SHOT;
            }
            if flow.frag == FRAG_LATER {
                // Its first fragment made no entry (dropped, or the entry went since).
                count(Stat::DropFragment);
                return TC_ACT_SHOT;
            }
            let mut v = judge(ctx, side, &ikey, iface, flow);
            let mut entry = CtValue {
                first_seen_ns: now,
                mark: v.mark,
                judge_ifindex: ifindex,
                acl_id: iface.acl_id,
                verdict: v.drop as u8,
                orig_is_a: a_to_b as u8,
                limit: v.limit,
                decided: v.by,
                flags: if side == Side::ToApp { FLAG_JUDGED_TO_APP } else { 0 },
                ..CtValue::default()
            };
            if v.drop {
                // The flow log must show what was blocked: a record apart from the
                // conntrack, which its next packet is judged without.
                record_drop(&key, &mut entry, a_to_b, flow, now);
                count(Stat::DropAcl);
                return TC_ACT_SHOT;
            }
            account(&mut entry, DIR_ORIG, flow, now);
            let limited = over_limit(zone, &entry, now);
            // Only a new entry takes from the NI's share and its port's part: one that
            // replaces an expired or reopened entry adds nothing to the map. (Counted,
            // the reuse of a tuple, as a client's ports go round, drove the count up
            // between sweeps, to "pressed" and on to refusing flows while the map held
            // no more than before.)
            if found.is_none() {
                if let Err(full) = budget::take_flow(&ikey) {
                    count(full);
                    return TC_ACT_SHOT;
                }
            }
            // Where the lookup found no entry, a packet of this flow on another CPU may
            // have made one since (both found the map empty): the first entry stands, and
            // this packet is that flow's. An expired or reopened flow's entry is replaced
            // (two CPUs that find the same expired entry at once both replace it: a map
            // update cannot say "only if it is still that one").
            if let Some(old) = found.map(|old| unsafe { &*old }) {
                // The flow it replaces ends here, on record, unless its end went out.
                if old.flags & FLAG_ENDED == 0 && old.verdict != VERDICT_DROP {
                    events::emit(EVENT_REPLACED, &key, old, Stat::CtNew);
                }
                entry.first_seen_ns = ct::start_after(now, old.first_seen_ns);
            }
            let made = match found {
                Some(old) if !ct::is_expired(unsafe { &*old }, flow.proto, now + CLOCK_SLACK_NS) => {
                    // A closed flow's tuple reopened by a SYN (a client's ports come
                    // round), or an NI's DHCP tuple taken by another port
                    // (`starts_anew`): rewritten in place. A map update would take a new
                    // element off the LRU's free lists and push the old one back, under their
                    // locks: a tenth of the programs' time per connection where every
                    // tuple is reused, as a busy client's are. The sweep takes only
                    // entries expired by its clock, which runs up to CLOCK_SLACK_NS ahead
                    // of ours: never one written here (a write into an entry it took
                    // would be lost, where an update makes it again).
                    unsafe { *old = entry };
                    true
                }
                _ => CT.insert(&key, &entry, if found.is_some() { BPF_ANY } else { BPF_NOEXIST } as u64).is_ok(),
            };
            if made {
                count(Stat::CtNew);
                events::emit(EVENT_START, &key, &entry, Stat::CtNew);
            } else if found.is_some() {
                count(Stat::CtInsertFailed);
            } else if let Some(first) = CT.get_ptr_mut(&key) {
                let first = unsafe { &mut *first };
                let dir = first.direction(a_to_b);
                // As on a hit: only the flow's own port sends its packets (every DHCP
                // client of the NI shares one tuple).
                if side == Side::FromApp && !ct::port_may_send(first, dir, ifindex) && !guard::is_dhcp_request(flow) {
                    count(Stat::DropCtPort);
                    return TC_ACT_SHOT;
                }
                account(first, dir, flow, now);
                count(Stat::CtClash);
                v = verdict_of(first);
            } else {
                count(Stat::CtInsertFailed);
            }
            if limited {
                count(Stat::DropLimit);
                return TC_ACT_SHOT;
            }
            v
        }
    };
    if verdict.drop {
        count(Stat::DropCt);
        return TC_ACT_SHOT;
    }
    if side == Side::FromApp {
        // EVE's CONNMARK --restore-mark: the packet carries its connection's mark.
        ctx.set_mark(verdict.mark);
        if flow.dst == METADATA_IP && flow.dport == 80 && flow.proto == PROTO_TCP {
            if let Err(stat) = metadata_nat(ctx, zone, iface, flow, now) {
                count(stat);
                return TC_ACT_SHOT;
            }
        }
    }
    if side == Side::ToApp && iface.flags & IFACE_FLAG_IP_LEARN != 0 && guard::is_dhcp_reply(flow) && !came_from_app_port(ctx) {
        // (From the DHCP server outside: another app's "reply" would give this one any
        // address it names, a neighbour's too.)
        learn_address(ctx, &ikey, iface, flow);
    }
    count(Stat::PassCt);
    if side == Side::FromApp {
        // On in `app_port_from_app_fast`, which counts the packet at the port.
        fast::continue_from_app(ctx);
    }
    TC_ACT_OK
}

/// A switch NI's port learns its app's address from the DHCP server's reply it delivers
/// (until then the app may only ask for one, see `guard::from_app_ipv4`).
#[inline(always)]
fn learn_address(ctx: &TcContext, ikey: &IfaceKey, iface: &IfaceInfo, flow: &Flow) {
    let Ok(bootp) = ctx.load::<[u8; guard::BOOTP_PREFIX]>(flow.l4_off as usize + 8) else { return };
    let Some(ip) = guard::dhcp_reply_address(iface, &bootp) else { return };
    if iface.flags & IFACE_FLAG_IP_KNOWN != 0 && iface.app_ip == ip {
        return;
    }
    if let Some(entry) = IFACES.get_ptr_mut(ikey) {
        unsafe {
            (*entry).app_ip = ip;
            (*entry).flags |= IFACE_FLAG_IP_KNOWN;
        }
    }
}

/// A SYN on the tuple of a closed TCP flow starts a new one (judged anew; `ct::reopened_by`
/// says which). `a_to_b`: the packet's way along the key.
#[inline(always)]
fn reopens(entry: &CtValue, flow: &Flow, a_to_b: bool) -> bool {
    flow.proto == PROTO_TCP && ct::reopened_by(entry, flow.tcp_flags, entry.direction(a_to_b != flow.related))
}

/// Whether the packet starts a new flow on a live entry's tuple, the old flow ending on
/// record (`EVENT_REPLACED`): a SYN on a closed TCP flow (`reopens`: a client's ports
/// come round), or a DHCP request from a port the entry is not for. Every unconfigured
/// DHCP client of an NI sends from 0.0.0.0:68 to the broadcast, one tuple, and the entry
/// passes to the port that asks last (DHCP is implicitly allowed for every app); taken
/// over in place, the last asker's flow went on record as the first one's, with both
/// ports' packets.
#[inline(always)]
fn starts_anew(entry: &CtValue, flow: &Flow, a_to_b: bool, side: Side, ifindex: u32) -> bool {
    reopens(entry, flow, a_to_b)
        || (side == Side::FromApp && guard::is_dhcp_request(flow) && !ct::port_may_send(entry, entry.direction(a_to_b), ifindex))
}

/// The far end took the connection the client opened again on the flow's tuple
/// (`ct::takes_new_connection`): the entry follows the new connection (`ct::tcp_next`),
/// so on record the old flow ends (replaced, with what it carried) and a new one starts,
/// its counters from this answer on (the client's SYN went on the old flow's). Its
/// verdict and mark stay: the tuple's, judged by the same ACL.
#[inline(always)]
fn renew(key: &CtKey, entry: &mut CtValue, now: u64) {
    if entry.flags & FLAG_ENDED == 0 {
        events::emit(EVENT_REPLACED, key, entry, Stat::CtNew);
    }
    entry.first_seen_ns = ct::start_after(now, entry.first_seen_ns);
    entry.packets = [0; 2];
    entry.bytes = [0; 2];
    entry.flags &= !FLAG_ENDED;
    count(Stat::CtNew);
    events::emit(EVENT_START, key, entry, Stat::CtNew);
}

/// Counts a dropped flow's packet in its record (made from `fresh`, the entry its first
/// dropped packet would have had).
#[inline(always)]
fn record_drop(key: &CtKey, fresh: &mut CtValue, a_to_b: bool, flow: &Flow, now: u64) {
    let mut record = DROPS.get_ptr_mut(key);
    if record.is_none() {
        fresh.verdict = VERDICT_DROP;
        account(fresh, DIR_ORIG, flow, now);
        if DROPS.insert(key, &*fresh, BPF_NOEXIST as u64).is_ok() {
            events::emit(EVENT_DROPPED, key, fresh, Stat::DropAcl);
            return;
        }
        // The same flow's packet on another CPU made the record first (as for the
        // conntrack's `ct_clash`): one record, counted there.
        record = DROPS.get_ptr_mut(key);
    }
    if let Some(r) = record {
        let r = unsafe { &mut *r };
        let dir = r.direction(a_to_b);
        account(r, dir, flow, now);
    }
}

#[inline(always)]
fn judge(ctx: &TcContext, side: Side, ikey: &IfaceKey, iface: &IfaceInfo, flow: &Flow) -> Verdict {
    let walk = BitmapWalk { acl: iface.acl_id };
    match side {
        Side::FromApp => {
            let facts = RemoteFacts { device: to_device(iface, flow), ..remote_facts(ikey, iface, flow.dst) };
            acl::judge_from_app(&walk, iface, flow, &facts)
        }
        Side::ToApp if iface.flags & IFACE_FLAG_SWITCH != 0 => {
            acl::judge_from_outside(&walk, iface, flow, &remote_facts(ikey, iface, flow.src))
        }
        Side::ToApp => acl::judge_toward_app(iface, flow, skb_mark(ctx)),
    }
}

/// The port's ACL searched through its bitmaps (`classify`), by `acl_search`: its summary
/// (an ACL of more than one chunk), the chunks it names in order, then its host ACEs, each
/// pass a `bpf_loop` (Linux 5.17+), whose step the verifier checks once instead of once
/// per iteration.
struct BitmapWalk {
    acl: u32,
}

/// `classify::AclMaps` over the pinned maps.
struct PinnedAcls;

impl AclMaps for PinnedAcls {
    #[inline(always)]
    fn range_page(&self, key: &RangeKey) -> Option<&RangePage> {
        unsafe { ACL_RANGES.get(key) }
    }
    #[inline(always)]
    fn proto_bits(&self, key: &ProtoBitsKey) -> Option<&Bits> {
        unsafe { ACL_PROTO.get(key) }
    }
    #[inline(always)]
    fn summary_page(&self, key: &SummaryKey) -> Option<&SummaryPage> {
        unsafe { ACL_SUMMARY.get(key) }
    }
    #[inline(always)]
    fn ace(&self, key: &AceKey) -> Option<&Ace> {
        let (group, at) = AceGroup::locate(key);
        unsafe { ACES.get(&group) }?.get(at)
    }
    #[inline(always)]
    fn host_ace(&self, key: &AceKey) -> Option<u32> {
        unsafe { ACL_HOSTS.get(key) }.copied()
    }
}

/// What the search's steps read and write: in the per-CPU scratch map `ACL_WALK`, not
/// on the program's stack (see there).
#[repr(C)]
pub struct WalkState {
    acl: u32,
    /// The deciding ACE's index so far; NOT_FOUND: none.
    found: u32,
    /// The chunks to read (`classify::candidate_chunks`): bit c for chunk c.
    candidates: u32,
    /// The host pass's first bit: the host set mask's lowest.
    host_from: u32,
    q: AceQuery,
}

// ACLWALK_V2's value: another size needs another pin version (`map_names`).
const _: () = assert!(size_of::<WalkState>() == 40);

const NOT_FOUND: u32 = u32::MAX;

impl AceWalk for BitmapWalk {
    #[inline(always)]
    fn first(&self, q: &AceQuery) -> Option<Decided> {
        let state = ACL_WALK.get_ptr_mut(0)?;
        unsafe {
            (*state).acl = self.acl;
            (*state).q = *q;
        }
        let found = acl_search();
        if found == NOT_FOUND {
            return None;
        }
        let ace = PinnedAcls.ace(&AceKey { acl: self.acl, index: found })?;
        Some(Decided { index: found, ace: *ace })
    }
}

/// The search of the ACL and the flow in this CPU's `ACL_WALK` state: the first deciding
/// ACE's index, or NOT_FOUND (no ACE decides, or no ACL under the id: default drop).
///
/// A global BPF function (exported by `build.rs`, so its BTF linkage is global): the
/// verifier checks it once, on its own, for any state. Inlined, the search and its loops'
/// callbacks were checked again on every path of the caller that reached them, hundreds
/// in the port programs, and the summary's six page searches took the to-app program
/// over 6.1's limit; as a function it took 6.1's counts down (from-app 466k to 303k,
/// to-app 511k to 384k). It takes no argument: the caller leaves the ACL id and the
/// flow in the per-CPU state, which keeps the call valid on every kernel with global
/// functions (5.6+).
///
/// Its frame is counted with its caller's and a step's, 512 bytes in all: on 6.1 the
/// from-app program's 416, this one's and the chunk step's (56), each rounded up to 32.
/// So the summary is a step of its own, not inline here.
#[no_mangle]
#[inline(never)]
pub extern "C" fn acl_search() -> u32 {
    let Some(state) = ACL_WALK.get_ptr_mut(0) else { return NOT_FOUND };
    let acl = unsafe { (*state).acl };
    // No shape: no ACL (yet) under this id.
    let Some(shape) = (unsafe { ACL_SHAPES.get(&acl) }) else { return NOT_FOUND };
    unsafe {
        (*state).found = NOT_FOUND;
        (*state).candidates = u32::MAX;
    }
    // bpf_loop's context lives on the stack (6.1): a pointer to the state.
    let mut ctx = state;
    let ctx_ptr = &mut ctx as *mut *mut WalkState as *mut c_void;
    unsafe {
        if shape.summarized() {
            bpf_loop(1, summary_step as *mut c_void, ctx_ptr, 0);
        }
        // No step past the last chunk the summary names.
        let through_last_candidate = 32 - (*state).candidates.leading_zeros();
        bpf_loop(shape.chunks().min(through_last_candidate), chunk_step as *mut c_void, ctx_ptr, 0);
        // Only the bits from the host set mask's lowest to its highest can name a host ACE
        // that resolved to the remote (an ACL's host ACEs may sit on the top bits, beside
        // another ACL's: `classify::compile`), and none for most flows.
        let mask = (*state).q.facts.host_mask;
        let (from, to) = (mask.trailing_zeros(), (64 - mask.leading_zeros()).min(shape.host_aces).min(MAX_HOST_ACES as u32));
        if from < to {
            (*state).host_from = from;
            bpf_loop(to - from, host_step as *mut c_void, ctx_ptr, 0);
        }
        (*state).found
    }
}

/// The summary's chunks for the flow.
extern "C" fn summary_step(_: u64, state: *mut c_void) -> i64 {
    let state = unsafe { &mut **(state as *mut *mut WalkState) };
    state.candidates = classify::candidate_chunks(&PinnedAcls, state.acl, &state.q);
    1
}

/// One chunk of the bitmaps, if the summary names it: 1 stops the loop (the chunk has the
/// first deciding ACE).
extern "C" fn chunk_step(chunk: u64, state: *mut c_void) -> i64 {
    let state = unsafe { &mut **(state as *mut *mut WalkState) };
    if state.candidates & 1 << (chunk & 31) == 0 {
        return 0;
    }
    match classify::chunk_first(&PinnedAcls, state.acl, chunk as u32, &state.q) {
        Some(index) => {
            state.found = index;
            1
        }
        None => 0,
    }
}

/// One host ACE, by its bit (`host_from` on): it decides if it comes before the bitmaps'
/// answer.
extern "C" fn host_step(ordinal: u64, state: *mut c_void) -> i64 {
    let state = unsafe { &mut **(state as *mut *mut WalkState) };
    match classify::host_step(&PinnedAcls, state.acl, state.host_from + ordinal as u32, &state.q, state.found) {
        HostStep::Decides(index) => {
            state.found = index;
            1
        }
        HostStep::Stop => 1,
        HostStep::Next => 0,
    }
}

/// Whether an app's new flow goes to the device itself: an address of the agent's netns
/// (the NIs' veth /24, the uplinks' addresses in DEVICE_V1) where no port map listens.
/// A switch NI's apps have no path into the agent's netns.
#[inline(always)]
fn to_device(iface: &IfaceInfo, flow: &Flow) -> bool {
    if iface.flags & IFACE_FLAG_SWITCH != 0 {
        return false;
    }
    let device = acl::prefix_contains(VETH_NET, VETH_NET_LEN, flow.dst) || unsafe { DEVICE.get(&flow.dst) }.is_some();
    device
        && unsafe { PORTMAPS.get(&PortmapKey { domain: DOMAIN_AGENT, addr: flow.dst, port: flow.dport, proto: flow.proto, _pad: 0 }) }
            .is_none()
}

/// The eidset and host-set lookups for a new flow's remote end.
#[inline(always)]
fn remote_facts(ikey: &IfaceKey, iface: &IfaceInfo, remote: netns_ebpf_common::Ipv4) -> RemoteFacts {
    let in_eidset = remote != iface.app_ip && unsafe { EIDSET.get(EidKey { zone: ikey.zone, addr: remote }) }.is_some();
    let now = clock::now_ns();
    let host_mask = match unsafe { HOSTSET.get(HostKey { zone: ikey.zone, ifindex: ikey.ifindex, addr: remote }) } {
        Some(e) if e.expires_ns > now => e.ace_mask,
        _ => 0,
    };
    RemoteFacts { in_eidset, host_mask, device: false }
}

/// A known flow's RST too far from its sender's sequence numbers to be its own (it
/// would close the entry under a live flow): counted, to be dropped.
#[inline(always)]
fn rst_refused(entry: &CtValue, dir: usize, flow: &Flow) -> bool {
    let refused = flow.proto == PROTO_TCP && flow.tcp_flags & TCP_RST != 0 && !ct::rst_acceptable(entry, dir, flow.tcp_seq, flow.tcp_flags);
    if refused {
        count(Stat::DropTcpRst);
    }
    refused
}

/// Counts a packet of a known flow (`key`, `entry`) in its entry, reports the flow's end
/// when this packet closes it, and charges an allowed flow's limit. False: over the
/// limit (counted), to be dropped.
#[inline(always)]
fn charge(zone: u32, key: &CtKey, entry: &mut CtValue, dir: usize, flow: &Flow, now: u64) -> bool {
    let state = entry.tcp_state;
    account(entry, dir, flow, now);
    if event::closes(state, entry.tcp_state) && entry.flags & FLAG_ENDED == 0 {
        entry.flags |= FLAG_ENDED;
        events::emit(EVENT_END, key, entry, Stat::PassCt);
    }
    if entry.verdict != VERDICT_DROP && over_limit(zone, entry, now) {
        count(Stat::DropLimit);
        return false;
    }
    true
}

/// The to-app program's work, done by the fast path at the NI veth, for a reply it hands
/// past the port into the app's netns (`fast::reply_may_skip_port` says when that is
/// all there is to do): the verdict of the flow's entry, the entry's and the port's
/// counters, as `app_port_to_app` would count them (the port: the one that judged the
/// flow).
#[inline(always)]
pub fn to_app_past_port(ctx: &TcContext, zone: u32, key: &CtKey, entry: &mut CtValue, dir: usize, flow: &Flow, now: u64) -> i32 {
    let verdict = if rst_refused(entry, dir, flow) || !charge(zone, key, entry, dir, flow, now) {
        TC_ACT_SHOT
    } else {
        verdict_action(entry.verdict == VERDICT_DROP, Stat::PassCt, Stat::DropCt)
    };
    count_port(zone, entry.judge_ifindex, PORT_DIR_TO_APP, verdict == TC_ACT_SHOT, ctx.len());
    verdict
}

/// A packet from one app to another app of the NI crosses two app ports; the conntrack
/// counts it once, at the port it entered by. The from-app side leaves the connection
/// mark on the skb; a packet that reaches the to-app side still carrying one came from an
/// app port of this bridge. Marks never cross namespaces (veth scrubs them), so traffic
/// from outside the NI is counted here (a port map's mark is set in this netns, but such
/// a packet is not counted elsewhere either: the NAT programs count only the replies the
/// fast path hands past the port, `to_app_past_port`, which never reach it).
#[inline(always)]
fn counts_here(ctx: &TcContext, side: Side) -> bool {
    side == Side::FromApp || skb_mark(ctx) == 0 || !came_from_app_port(ctx)
}

/// App ports stamp marks without the drop bit of app-initiated flows; port maps stamp
/// their ACE's mark too, but those packets arrive from the NI veth, not an app port. The
/// ingress interface tells them apart.
#[inline(always)]
fn came_from_app_port(ctx: &TcContext) -> bool {
    let in_if = unsafe { (*ctx.skb.skb).ingress_ifindex };
    unsafe { IFACES.get(IfaceKey { zone: zone(ctx), ifindex: in_if }) }.is_some()
}

#[inline(always)]
fn account(entry: &mut CtValue, dir: usize, flow: &Flow, now: u64) {
    let dir = if dir == DIR_ORIG { DIR_ORIG } else { DIR_REPLY };
    // Several CPUs may count the same flow at once.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut entry.packets[dir], 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut entry.bytes[dir], flow.ip_len as u64);
    }
    entry.last_seen_ns = now;
    if dir == DIR_REPLY {
        entry.flags |= FLAG_SEEN_REPLY;
    }
    if flow.proto == PROTO_TCP && flow.frag != FRAG_LATER {
        ct::track_tcp(entry, dir, flow.tcp_flags, flow.tcp_end);
    }
}

/// Charges a packet of a rate-limited flow to its ACE's bucket; true: over the limit.
/// (Two CPUs may update one bucket at once; the limit is then a little loose, never
/// tighter.)
#[inline(always)]
fn over_limit(zone: u32, entry: &CtValue, now: u64) -> bool {
    if entry.limit == 0 {
        return false;
    }
    let key = LimitKey { zone, ifindex: entry.judge_ifindex, ace_index: entry.limit as u32 - 1 };
    match LIMITS.get_ptr_mut(&key) {
        Some(b) => !limit::take(unsafe { &mut *b }, now),
        None => false,
    }
}

/// A flow's verdict as its conntrack entry holds it.
#[inline(always)]
fn verdict_of(entry: &CtValue) -> Verdict {
    Verdict { mark: entry.mark, drop: entry.verdict == VERDICT_DROP, limit: entry.limit, by: entry.decided }
}

#[inline(always)]
fn verdict_action(drop: bool, pass: Stat, dropped: Stat) -> i32 {
    if drop {
        count(dropped);
        TC_ACT_SHOT
    } else {
        count(pass);
        TC_ACT_OK
    }
}

/// The app's request to 169.254.169.254:80 goes to the gateway's port 80 instead (the
/// metadata server of the NI). Both directions are recorded in the NI's NAT domain, and
/// taken from the NI's share of the map like any translation of its flows (else SYNs
/// from every source port would fill the map for every NI). Err: what to count.
#[inline(always)]
fn metadata_nat(ctx: &TcContext, zone: u32, iface: &IfaceInfo, flow: &mut Flow, now: u64) -> Result<(), Stat> {
    let key = NatKey::of(zone, flow);
    let fwd = match NAT.get_ptr_mut(&key) {
        Some(v) => unsafe {
            crate::nat::used_by(&mut *v, flow, now);
            *v
        },
        None => {
            if !budget::take_translation(zone, 2) {
                return Err(Stat::DropZoneFull);
            }
            let fwd = NatValue::new(now, 0, iface.gateway, 80, REWRITE_DST, NAT_FLAG_ORIG);
            let rev = NatValue::new(now, 0, METADATA_IP, 80, REWRITE_SRC, 0);
            NAT.insert(&key.rewritten(&fwd).reversed(), &rev, BPF_ANY as u64).map_err(|_| Stat::NatMalformed)?;
            NAT.insert(&key, &fwd, BPF_ANY as u64).map_err(|_| Stat::NatMalformed)?;
            fwd
        }
    };
    rewrite::apply(ctx, flow, &fwd).map_err(|()| Stat::NatMalformed)
}

/// The gateway's answer goes back to the app as from 169.254.169.254:80. Its entry is
/// used, as any reply half: the pair counts as answered, and lives while either way
/// talks (read only, the pair went 2 minutes after the app's last packet: an answer
/// slower than that, or the server's close of an idle connection, reached the app from
/// the gateway's own address).
#[inline(always)]
fn undo_metadata_nat(ctx: &TcContext, zone: u32, flow: &mut Flow, now: u64) -> Result<(), ()> {
    match NAT.get_ptr_mut(&NatKey::of(zone, flow)) {
        Some(v) => {
            let v = unsafe {
                crate::nat::used_by(&mut *v, flow, now);
                *v
            };
            rewrite::apply(ctx, flow, &v)
        }
        None => Ok(()),
    }
}
