//! The redirect fast path (`netns_ebpf_common::fast` says which packets may take it and
//! why): where a hop's routes are the agent's alone, the agent's maps say where the
//! kernel would route a packet (out of an NI, `from_app`; back into it and to its app,
//! `from_uplink`, `to_app`); at the agent's netns' way out, whose routes are also the
//! uplinks', a FIB lookup asks (`to_uplink`). When that is where the fast path leads, the
//! packet is sent there directly, with the MACs and the TTL the routing hop would have
//! given it. Anything else (no route, another interface, no neighbour where the kernel
//! resolves it, the MTU, the last TTL) is left to the kernel's path (TC_ACT_OK;
//! `from_app`: None). A hop's counter counts the packets it sent on (one the program it
//! stands in for would drop is counted as that program counts it).

use core::{ffi::c_void, num::NonZeroU32};

use aya_ebpf::{
    bindings::{
        __sk_buff, bpf_check_mtu_flags, bpf_fib_lookup, bpf_redir_neigh, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT,
        BPF_FIB_LOOKUP_TBID, TC_ACT_OK, TC_ACT_SHOT,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer, bpf_skb_change_type},
    programs::TcContext,
};
use netns_ebpf_common::{
    csum,
    ct::{CtKey, FLAG_JUDGED_TO_APP},
    fast::{self, FastZone, TAIL_FROM_APP},
    nat::{NatKey, NatValue, DOMAIN_AGENT},
    packet::{self, Flow, PacketReader, Parsed, ETH_HLEN},
    veth_zone, IfaceKey, Ipv4, Stat, PROTO_TCP, PROTO_UDP,
};

use crate::{
    app_port, clock,
    maps::{CT, DEVICE, FAST_PROGRAMS, FAST_ZONES, FIB_SCRATCH, IFACES, NAT_IFACES},
    nat::{AtNiVeth, SourceScratch},
    rewrite,
    skb::{count, count_n, ifindex, write, Skb},
};

/// `struct bpf_fib_lookup` as the kernel lays it out (64 bytes; the unions by the IPv4
/// member the lookup reads or writes).
#[repr(C)]
pub struct FibParams {
    family: u8,
    l4_protocol: u8,
    sport: [u8; 2],
    dport: [u8; 2],
    /// In: the IPv4 total length to check against the MTU; 0: the kernel checks the
    /// packet itself (a GSO packet by its segments). Out: the MTU.
    tot_len: u16,
    /// In: the interface the packet arrived on (rules' `iif`); out: where it leaves.
    ifindex: u32,
    tos: u32,
    src: Ipv4,
    src_v6_rest: [u32; 3],
    /// In: the destination; out: the next hop (the gateway, or the destination).
    dst: Ipv4,
    dst_v6_rest: [u32; 3],
    vlan: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// `struct bpf_redir_neigh`: the next hop for `bpf_redirect_neigh`.
#[repr(C)]
pub struct NextHop {
    family: u32,
    addr: Ipv4,
    v6_rest: [u32; 3],
}

/// What the lookups and redirects read and write, in FIBSCRATCH_V4 (per CPU).
#[repr(C)]
pub struct FibScratch {
    fib: FibParams,
    nh: NextHop,
    /// `past_ni_veth`'s NAT key, off the stack. Written field by field
    /// (`NatKey::write_to`): a whole-struct store compiles to a call of `memset` for the
    /// padding, a BPF function whose frame 6.1 counts too (the pad bytes stay zero: the
    /// per-CPU scratch starts zeroed and nothing writes them).
    nat_key: NatKey,
    /// The translation `past_ni_veth` and `to_uplink` apply (`source.to`: a copy of the
    /// map's entry), or `new_past_ni_veth` makes for a new flow (`nat::make_source`).
    source: SourceScratch,
    /// `to_app`'s conntrack key, off its frame (which 6.1 counts with the NAT
    /// program's); written field by field as `nat_key` (`CtKey::write_to`).
    ct_key: CtKey,
}

/// `skb->pkt_type` of a packet addressed to the receiving host (linux/if_packet.h).
const PACKET_HOST: u32 = 0;

const AF_INET: u8 = 2;
const LOOKUP_IN_TABLE: u32 = BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID;
const IP_TTL: usize = ETH_HLEN + 8;
const FIB_PARAMS_LEN: i32 = size_of::<FibParams>() as i32;
const NEXT_HOP_LEN: i32 = size_of::<NextHop>() as i32;

/// The from-app program, once a packet of an allowed flow has passed the port: its fast
/// path goes on in a program of its own (`app_port::app_port_from_app_fast`), by tail
/// call. Verified apart: in the from-app program, 6.1's verifier walked the fast path on
/// every path the port's checks leave (840k of its 1M instructions, 370k of them the
/// fast path's). Nothing handed over (a tail call keeps no stack, and a flow kept live
/// to the end for it cost 6.1's verifier its pruning): the fast path reads the packet
/// again. Returns only where the tail call fails (no program in FASTPROG_V1): the packet
/// takes the kernel's path.
#[inline(always)]
pub fn continue_from_app(ctx: &TcContext) {
    unsafe { FAST_PROGRAMS.tail_call(ctx, TAIL_FROM_APP) };
}

/// The from-app port's fast path, in its own program (`continue_from_app`): the packet
/// past the bridge and the NI's routing (`from_app`), translated as the NI veth's egress
/// would (`past_ni_veth`, or for a new flow `new_past_ni_veth`); TC_ACT_OK: the kernel's
/// path. The packet is read again; the port's program let it pass as it is (its only
/// rewrite, the metadata server's, leads to the NI itself: the kernel's path).
#[inline(always)]
pub fn from_app_past_port(ctx: &TcContext, zone: u32) -> i32 {
    // An NI without the fast path (or with it off) reads nothing more.
    let Some(fz) = enabled(zone) else { return TC_ACT_OK };
    let Ok(Parsed::Ipv4(flow)) = packet::parse(&Skb(ctx)) else { return TC_ACT_OK };
    let flow = &flow;
    match from_app(ctx.skb.skb, fz, flow) {
        Some(ni_veth) => match past_ni_veth(ctx.skb.skb, zone, ni_veth, flow) {
            MAKE_SOURCE => new_past_ni_veth(ctx.skb.skb, zone, ni_veth, flow),
            action => action,
        },
        None => TC_ACT_OK,
    }
}

/// From an app's port (TC ingress): whether a packet of an allowed flow may go past the
/// bridge and the NI's routing, to the NI veth: its ifindex (the routing hop's MACs and
/// TTL are on the packet then; `past_ni_veth` sends it), or None: the kernel's path.
/// No FIB lookup: the NI's routes are the agent's, and they send the packet to the
/// agent when `fast::routed_to_agent` says so (as `from_uplink` and `to_app` find their
/// way by the agent's maps); the hop's MACs are the veth ends' (`into_agent_macs`), the
/// MTU the NI end's.
/// Its own BPF function, as are `past_ni_veth` and `new_past_ni_veth`: with the three
/// inlined, the fast path's program took 6.18's verifier 200k instructions, apart 118k.
#[inline(never)]
pub fn from_app(skb: *mut __sk_buff, fz: &FastZone, flow: &Flow) -> Option<NonZeroU32> {
    let ctx = TcContext::new(skb);
    if !to_bridge(&ctx, &fz.bridge_mac) || !fast::routed_to_agent(fz, flow) {
        return None;
    }
    let to_device = unsafe { DEVICE.get(&flow.dst) }.is_some();
    if !fast::app_packet_may_skip(flow, to_device)
        || !fits_mtu(&ctx, fz.ni_veth_ifindex)
        || hop_ttl(&ctx).is_err()
        || write(&ctx, 0, &fz.into_agent_macs).is_err()
    {
        return None;
    }
    NonZeroU32::new(fz.ni_veth_ifindex)
}

/// Whether the frame is addressed to the bridge (the gateway's MAC, which the agent sets):
/// on the kernel's path only those go up to the NI's routing; a frame for any other MAC
/// is bridged (or flooded) by it, whatever its IP destination, and so takes that path.
/// Read in place (direct packet access: no stack, which `from_app`'s caller has little
/// of on 6.1), byte by byte (an array compare would call `bcmp`).
#[inline(always)]
fn to_bridge(ctx: &TcContext, bridge_mac: &[u8; 6]) -> bool {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 6 > end {
        return false;
    }
    let dst = unsafe { core::ptr::read_unaligned(start as *const [u8; 6]) };
    dst[0] == bridge_mac[0]
        && dst[1] == bridge_mac[1]
        && dst[2] == bridge_mac[2]
        && dst[3] == bridge_mac[3]
        && dst[4] == bridge_mac[4]
        && dst[5] == bridge_mac[5]
}

/// Sends a packet `from_app` let past the NI's routing on: when its translation at the
/// NI veth (`ni_veth`) is known and in use, it is translated here as the veth's egress
/// would translate it (`nat::known_source`) and handed to the agent-side veth's
/// ingress (`bpf_redirect_peer`), past that egress's program and the veth's queue; when
/// the flow has none and the egress would make one, `MAKE_SOURCE`: the caller has
/// `new_past_ni_veth` make it; else to the NI veth's egress (`bpf_redirect`), as the
/// routing would have sent it.
#[inline(never)]
pub fn past_ni_veth(skb: *mut __sk_buff, zone: u32, ni_veth: NonZeroU32, flow: &Flow) -> i32 {
    let ctx = TcContext::new(skb);
    let ni_veth = ni_veth.get();
    let Some(s) = FIB_SCRATCH.get_ptr_mut(0) else { return to_ni_veth(ni_veth) };
    let found = unsafe {
        NatKey::of(zone, flow).write_to(&mut (*s).nat_key);
        crate::nat::known_source(&ctx, zone, ni_veth, &(*s).nat_key, &mut (*s).source.to, flow)
    };
    match found {
        AtNiVeth::Applied(action) => sent_past_ni_veth(&ctx, action, ni_veth),
        AtNiVeth::ToMake => MAKE_SOURCE,
        AtNiVeth::Left => to_ni_veth(ni_veth),
    }
}

/// `past_ni_veth`'s answer for a new flow whose translation the NI veth's egress would
/// make: no TC verdict (those are small, from -1 up).
pub const MAKE_SOURCE: i32 = i32::MIN;

/// After `past_ni_veth` said `MAKE_SOURCE` (its NAT key in the scratch): the new flow's
/// source translation at the NI veth made here (`nat::make_source`), as the veth's
/// egress would make it, and the packet handed to the agent-side veth's ingress, as
/// `past_ni_veth` hands a translated one: its first packet skips the veth's queue too.
/// A function of its own: the search for a free port keeps more across its map calls
/// than `past_ni_veth`'s frame needs.
#[inline(never)]
pub fn new_past_ni_veth(skb: *mut __sk_buff, zone: u32, ni_veth: NonZeroU32, flow: &Flow) -> i32 {
    let ctx = TcContext::new(skb);
    let ni_veth = ni_veth.get();
    let Some(s) = FIB_SCRATCH.get_ptr_mut(0) else { return to_ni_veth(ni_veth) };
    match unsafe { crate::nat::make_source(&ctx, zone, ni_veth, &(*s).nat_key, &mut (*s).source, flow) } {
        Some(action) => sent_past_ni_veth(&ctx, action, ni_veth),
        None => to_ni_veth(ni_veth),
    }
}

/// A packet translated as the NI veth's egress would (`action`: TC_ACT_OK), handed to
/// the agent-side veth's ingress; or the drop that translation gave.
#[inline(always)]
fn sent_past_ni_veth(ctx: &TcContext, action: i32, ni_veth: u32) -> i32 {
    if action != TC_ACT_OK {
        return action;
    }
    count(Stat::FastFromApp);
    count(Stat::FastPastNiVeth);
    into_peer(ctx, ni_veth)
}

/// A packet past the NI's routing, untranslated, to the NI veth's egress, as the routing
/// would have sent it.
#[inline(always)]
fn to_ni_veth(ni_veth: u32) -> i32 {
    count(Stat::FastFromApp);
    unsafe { bpf_redirect(ni_veth, 0) as i32 }
}

/// At the agent-side veth's ingress: a packet whose translation at the uplink is known
/// (`v`: its entry, under `key`, the packet's tuple in the agent's domain) goes straight
/// out of that uplink, to the next hop the NI's uplink table gives (the lookup sees the
/// `iif` rule), past the agent's routing, by `bpf_redirect_neigh` (the neighbour layer
/// writes the MACs, as on the kernel's path). The uplink's translation is applied here,
/// as its egress program would apply it (`nat::apply_source_in_use`), and the packet
/// marked so that program has nothing to do (`fast::SNAT_DONE_MARK`): one parse and
/// three lookups less per packet. A packet whose translation needs more (a new flow on
/// an old tuple, say) is left for that program.
#[inline(always)]
pub fn to_uplink(ctx: &TcContext, key: &NatKey, v: *mut NatValue, flow: &Flow) -> i32 {
    let Some((s, out, snat_ip)) = uplink_hop(ctx, flow) else { return TC_ACT_OK };
    // The uplink whose translation the flow has: not some other way out.
    if snat_ip != unsafe { (*v).addr } || hop_ttl(ctx).is_err() {
        return TC_ACT_OK;
    }
    match crate::nat::apply_source_in_use(ctx, key, unsafe { &mut *v }, unsafe { &mut (*s).source.to }, flow) {
        Some(TC_ACT_OK) => {
            ctx.set_mark(fast::SNAT_DONE_MARK);
            count(Stat::FastSnatDone);
        }
        Some(dropped) => return dropped,
        None => {}
    }
    to_next_hop(s, out)
}

/// At the agent-side veth's ingress, a packet that has no translation in the agent's
/// domain yet (a new flow's first, `fast::leaves_untranslated`): straight to the uplink
/// the NI's uplink table gives, when that uplink translates the NI's packets; its egress
/// program makes the translation, as on the kernel's path. Some: sent; None: the rest
/// of the NAT program and the kernel's path (a hairpin's port map, say, on the device's
/// own address, which the lookup finds local).
#[inline(always)]
pub fn new_to_uplink(ctx: &TcContext, flow: &Flow) -> Option<i32> {
    let (s, out, _) = uplink_hop(ctx, flow)?;
    hop_ttl(ctx).ok()?;
    Some(to_next_hop(s, out))
}

/// The uplink that a packet arriving from an NI at the agent-side veth leaves by, when
/// the fast path may send it there: the scratch holding the FIB's answer, the uplink's
/// ifindex and its translation's address. None: the NI has no fast path, the packet came
/// in by another interface, the FIB sends it elsewhere (or nowhere yet), or that
/// interface does not translate the NI's packets.
#[inline(always)]
fn uplink_hop(ctx: &TcContext, flow: &Flow) -> Option<(*mut FibScratch, u32, Ipv4)> {
    let fz = enabled(veth_zone(flow.src))?;
    if ifindex(ctx) != fz.agent_veth_ifindex {
        return None;
    }
    let s = lookup(ctx, fz.agent_veth_ifindex, flow, fz.uplink_table)?;
    let out = unsafe { (*s).fib.ifindex };
    let nif = unsafe { NAT_IFACES.get(IfaceKey { zone: DOMAIN_AGENT, ifindex: out }) }.filter(|nif| nif.snat == 1)?;
    Some((s, out, nif.snat_ip))
}

/// Out of interface `out` to the FIB's next hop in the scratch (`bpf_redirect_neigh`:
/// the neighbour layer writes the MACs, resolving the next hop where it must).
#[inline(always)]
fn to_next_hop(s: *mut FibScratch, out: u32) -> i32 {
    unsafe {
        (*s).nh.family = AF_INET as u32;
        (*s).nh.addr = (*s).fib.dst;
    }
    count(Stat::FastToUplink);
    unsafe { bpf_redirect_neigh(out, &mut (*s).nh as *mut NextHop as *mut bpf_redir_neigh, NEXT_HOP_LEN, 0) as i32 }
}

/// At an uplink's ingress, after the reply's translation back to an NI veth address:
/// straight into that NI (its veth's ingress, by `bpf_redirect_peer`), past the agent's
/// routing and the agent-side veth's egress, whose program has nothing to do for a
/// reply from an uplink (no translation in the agent's domain is keyed by such a reply
/// but one an outside client's port-mapped flow made with the same remote tuple, which
/// would mistranslate it there). No FIB lookup: the address is the NI end of a veth the
/// agent made, reached by that veth's connected route in a netns whose routes to those
/// addresses are the agent's alone (as Cilium sends a packet for a local endpoint by
/// its own maps); the hop's MACs are the veth ends' (`FastZone::into_ni_macs`), the MTU
/// the agent end's. The mark is cleared as the veth would clear it between namespaces.
#[inline(always)]
pub fn from_uplink(ctx: &TcContext, flow: &Flow) -> i32 {
    let Some(fz) = fast::ni_end_zone(flow.dst).and_then(enabled) else { return TC_ACT_OK };
    if !fits_mtu(ctx, fz.agent_veth_ifindex) || hop_ttl(ctx).is_err() || write(ctx, 0, &fz.into_ni_macs).is_err() {
        return TC_ACT_OK;
    }
    ctx.set_mark(0);
    count(Stat::FastFromUplink);
    unsafe { bpf_redirect_peer(fz.agent_veth_ifindex, 0) as i32 }
}

/// At an uplink's ingress, a reply whose translation there (`v`, a copy of the entry in
/// use) carries its NI's (`fast::inner_destination`): translated back to the app's address
/// and port in one rewrite (`v` made that translation), as this program and the NI veth's
/// ingress program would translate it one after the other (each counted), then into the
/// NI as `from_uplink` hands a reply, marked `NI_NAT_DONE_MARK`: the NI veth's program,
/// which would have looked up the NI's translation, sends it on to the app (`to_app`).
/// TCP and UDP only (whose translations carry it). None: the NI has no fast path, the hop
/// is not to be taken (the MTU, the last TTL), and nothing was touched.
#[inline(always)]
pub fn from_uplink_through_ni(ctx: &TcContext, flow: &mut Flow, v: &mut NatValue) -> Option<i32> {
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return None;
    }
    let fz = fast::ni_end_zone(v.addr).and_then(enabled)?;
    let (app, port) = fast::inner_destination(v, fz)?;
    if !fits_mtu(ctx, fz.agent_veth_ifindex) || hop_ttl(ctx).is_err() {
        return None;
    }
    (v.addr, v.port) = (app, port);
    if rewrite::apply(ctx, flow, v).is_err() || write(ctx, 0, &fz.into_ni_macs).is_err() {
        count(Stat::NatMalformed);
        return Some(TC_ACT_SHOT);
    }
    // Both translations applied: the uplink's and the NI's.
    count_n(Stat::NatRewrite, 2);
    ctx.set_mark(fast::NI_NAT_DONE_MARK);
    count(Stat::FastFromUplink);
    count(Stat::FastNiNatDone);
    Some(unsafe { bpf_redirect_peer(fz.agent_veth_ifindex, 0) as i32 })
}

/// At the NI veth's ingress, after the reply's translation back to the app's address:
/// past the NI's routing and the bridge, to the app's port. The port is the one that
/// judged the flow's first packet (the conntrack says), and the packet must be for that
/// port's app: its address, on the NI's connected subnet, whose every address is an
/// app's port's (no FIB lookup, as `from_uplink`); the hop's MACs are the app's and the
/// bridge's, the MTU the port's. When the to-app program would only count the packet
/// there (`fast::reply_may_skip_port`), it is counted here as there
/// (`app_port::to_app_past_port`) and handed on into the app's netns
/// (`bpf_redirect_peer`), past the port's egress and the veth's queue; else to the
/// port's egress (`bpf_redirect`), whose program judges and counts it. Replies from the
/// device's own addresses (hairpin port maps) come back the kernel's way, as their flows
/// went out. `via_uplink`: translated back at an uplink's ingress
/// (`from_uplink_through_ni`), by an uplink translation its flow's packets made leaving
/// by that uplink, which no flow to the device's own addresses does (the agent's netns
/// takes those in): its source is no device address, and that lookup is spared. Its own
/// BPF function: its frame adds to the NAT program's only here.
#[inline(never)]
pub fn to_app(skb: *mut __sk_buff, zone: u32, flow: &Flow, via_uplink: bool) -> i32 {
    let ctx = TcContext::new(skb);
    let Some(fz) = enabled(zone) else { return TC_ACT_OK };
    if ifindex(&ctx) != fz.ni_veth_ifindex || (!via_uplink && unsafe { DEVICE.get(&flow.src) }.is_some()) {
        return TC_ACT_OK;
    }
    let Some(s) = FIB_SCRATCH.get_ptr_mut(0) else { return TC_ACT_OK };
    let key = unsafe { &mut (*s).ct_key };
    let (k, a_to_b) = CtKey::new(zone, flow);
    k.write_to(key);
    let Some(entry) = CT.get_ptr_mut(&*key) else { return TC_ACT_OK };
    let entry = unsafe { &mut *entry };
    if entry.flags & FLAG_JUDGED_TO_APP != 0 {
        return TC_ACT_OK;
    }
    let port = entry.judge_ifindex;
    let Some(iface) = (unsafe { IFACES.get(IfaceKey { zone, ifindex: port }) }) else { return TC_ACT_OK };
    if iface.app_ip != flow.dst
        || !fits_mtu(&ctx, port)
        || hop_ttl(&ctx).is_err()
        || write(&ctx, 0, &iface.app_mac).is_err()
        || write(&ctx, 6, &fz.bridge_mac).is_err()
    {
        return TC_ACT_OK;
    }
    let dir = entry.direction(a_to_b);
    // (Read here, not passed from the NAT program: held across this function's helper
    // calls it would take a stack slot, and 6.1 counts this frame with that program's.)
    let now = clock::now_ns();
    if !fast::reply_may_skip_port(iface, entry, dir, flow, now) {
        count(Stat::FastToApp);
        return unsafe { bpf_redirect(port, 0) as i32 };
    }
    match app_port::to_app_past_port(&ctx, zone, key, entry, dir, flow, now) {
        TC_ACT_OK => {
            count(Stat::FastToApp);
            count(Stat::FastIntoApp);
            into_peer(&ctx, port)
        }
        dropped => dropped,
    }
}

/// Hands the packet to the other end of veth `ifindex`, in another netns, as that end
/// would receive it: no mark, and a packet for this host (the veth's `eth_type_trans`
/// would say so; kernels before the fix that has `bpf_redirect_peer` scrub it keep the
/// verdict of the interface it came in by, e.g. the app port's "another host", and the
/// kernel's path there would drop the packet).
#[inline(always)]
fn into_peer(ctx: &TcContext, ifindex: u32) -> i32 {
    ctx.set_mark(0);
    unsafe {
        bpf_skb_change_type(ctx.skb.skb, PACKET_HOST);
        bpf_redirect_peer(ifindex, 0) as i32
    }
}

#[inline(always)]
fn enabled(zone: u32) -> Option<&'static FastZone> {
    FAST_ZONES.get(zone).filter(|fz| fz.enabled != 0)
}

/// Where the kernel would forward `flow`'s packet arriving on `iif`: the scratch holding
/// the answer (out interface, next hop, MACs). None: not forwarded (local, no route, the
/// MTU) or no neighbour entry yet (the kernel's path resolves it; later packets find it).
/// `table`, when not 0, is the one the rules would pick for the packet: asked straight
/// (`BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID`), the rules' walk skipped (a tenth of
/// the programs' time per connection went to it); a kernel without the flag refuses it
/// (the agent writes no table there), and the lookup is asked again by the rules.
#[inline(always)]
fn lookup(ctx: &TcContext, iif: u32, flow: &Flow, table: u32) -> Option<*mut FibScratch> {
    let s = FIB_SCRATCH.get_ptr_mut(0)?;
    let rc = unsafe {
        let p = &mut (*s).fib;
        p.family = AF_INET;
        p.l4_protocol = flow.proto;
        p.sport = flow.sport.to_be_bytes();
        p.dport = flow.dport.to_be_bytes();
        // 0: the kernel checks the packet against the MTU, a GSO packet by its
        // segments (its total length would never pass).
        p.tot_len = 0;
        p.ifindex = iif;
        // (The lookup wrote its metric over `tos` last time.) The IPv6 parts are never
        // read for IPv4 nor written: they stay zero from the map's creation, and zeroing
        // them here would call `memset` (see `FibScratch::nat_key`).
        p.tos = 0;
        p.src = flow.src;
        p.dst = flow.dst;
        let by_table = if table != 0 {
            // `tbid` shares its place with the VLAN output, which the kernel zeroes again.
            p.vlan = table;
            bpf_fib_lookup(ctx.skb.skb as *mut c_void, p as *mut FibParams as *mut bpf_fib_lookup, FIB_PARAMS_LEN, LOOKUP_IN_TABLE)
        } else {
            -1
        };
        match by_table {
            rc if rc >= 0 => rc,
            _ => bpf_fib_lookup(ctx.skb.skb as *mut c_void, p as *mut FibParams as *mut bpf_fib_lookup, FIB_PARAMS_LEN, 0),
        }
    };
    (rc == BPF_FIB_LKUP_RET_SUCCESS as i64).then_some(s)
}

/// The TTL and the header's checksum (the four bytes from the TTL on: TTL, protocol,
/// checksum), rewritten in one write.
#[inline(always)]
fn hop_ttl(ctx: &TcContext) -> Result<(), ()> {
    let [ttl, proto, s0, s1]: [u8; 4] = Skb(ctx).read(IP_TTL).ok_or(())?;
    let new = fast::after_hop([ttl, proto]).ok_or(())?;
    let [n0, n1] = csum::replace([s0, s1], &[ttl, proto], &new);
    write(ctx, IP_TTL, &[new[0], new[1], n0, n1])
}

/// Whether the packet fits the MTU of interface `ifindex` (in this netns), a GSO packet
/// by its segments: what the FIB lookup checks, and the kernel's forwarding.
#[inline(always)]
fn fits_mtu(ctx: &TcContext, ifindex: u32) -> bool {
    // In: 0 (the packet's own length); out: the MTU.
    let mut mtu_len = 0u32;
    unsafe { bpf_check_mtu(ctx.skb.skb as *mut c_void, ifindex, &mut mtu_len, 0, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS as u64) == 0 }
}
