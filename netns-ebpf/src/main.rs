//! TC programs on the app bridge ports of a network instance.
//!
//! One copy of this object is loaded per NI with the NI's `ZONE` set; all copies share the
//! pinned maps. Parsing and ACL logic live in `netns-ebpf-common` (host-tested); this file
//! only wires them to the kernel: packet reads, map lookups, counters, the verdict.
#![no_std]
#![no_main]
// bpfel has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF's atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    btf_maps::{HashMap, LruHashMap, PerCpuArray},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use netns_ebpf_common::{
    acl::{self, AclTable, Verdict},
    ct::{self, CtKey, CtValue, CT_MAX_ENTRIES, DIR_ORIG, DIR_REPLY, FLAG_SEEN_REPLY, VERDICT_DROP},
    packet::{self, Flow, PacketReader, ParseError, Parsed},
    IfaceInfo, IfaceKey, Stat, MAX_APP_PORTS, PROTO_TCP,
};

/// The NI this copy of the object serves; set by the loader.
#[unsafe(no_mangle)]
static ZONE: u32 = 0;

// BTF map definitions, so `bpftool map dump` prints keys and values field by field. The
// agent pins every map under its pin directory (names from `map_names`).

#[btf_map(name = "CT_V1")]
static CT: LruHashMap<CtKey, CtValue, { CT_MAX_ENTRIES as usize }> = LruHashMap::new();

#[btf_map(name = "IFACE_V1")]
static IFACES: HashMap<IfaceKey, IfaceInfo, { MAX_APP_PORTS as usize }> = HashMap::new();

#[btf_map(name = "ACL_V1")]
static ACLS: HashMap<IfaceKey, AclTable, { MAX_APP_PORTS as usize }> = HashMap::new();

#[btf_map(name = "STATS_V1")]
static STATS: PerCpuArray<u64, { Stat::COUNT as usize }> = PerCpuArray::new();

struct Skb<'a>(&'a TcContext);

impl PacketReader for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.0.load::<[u8; N]>(offset).ok()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// TC ingress of the bridge port: the packet comes from the app.
    FromApp,
    /// TC egress of the bridge port: the packet goes to the app.
    ToApp,
}

#[classifier]
pub fn app_port_from_app(ctx: TcContext) -> i32 {
    handle(&ctx, Side::FromApp)
}

#[classifier]
pub fn app_port_to_app(ctx: TcContext) -> i32 {
    handle(&ctx, Side::ToApp)
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn handle(ctx: &TcContext, side: Side) -> i32 {
    match packet::parse(&Skb(ctx)) {
        Ok(Parsed::Ipv4(flow)) => handle_ipv4(ctx, side, &flow),
        Ok(Parsed::Arp) => {
            count(Stat::PassArp);
            TC_ACT_OK
        }
        // We configure no IPv6 on NIs: letting it through would bypass the ACL.
        Ok(Parsed::Other(_)) => {
            count(Stat::DropNonIpv4);
            TC_ACT_SHOT
        }
        Err(ParseError::Fragment) => {
            count(Stat::DropFragment);
            TC_ACT_SHOT
        }
        Err(_) => {
            count(Stat::DropMalformed);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn handle_ipv4(ctx: &TcContext, side: Side, flow: &Flow) -> i32 {
    let zone = unsafe { core::ptr::read_volatile(&ZONE) };
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let ikey = IfaceKey { zone, ifindex };
    // Fail closed: a port we have no config for passes nothing but ARP.
    let Some(iface) = (unsafe { IFACES.get(&ikey) }) else {
        count(Stat::NoIfaceConfig);
        return TC_ACT_SHOT;
    };
    let (key, a_to_b) = CtKey::new(zone, flow);
    let now = unsafe { bpf_ktime_get_ns() };

    if let Some(entry) = CT.get_ptr_mut(&key) {
        let entry = unsafe { &mut *entry };
        if !ct::is_expired(entry, flow.proto, now) {
            if flow.related {
                // An ICMP error about a known flow follows that flow's verdict; it does not
                // change its state or counters.
                return verdict_action(entry.verdict == VERDICT_DROP, Stat::PassCt, Stat::DropCt);
            }
            if entry.judge_ifindex == ifindex && entry.policy_gen != iface.policy_gen {
                // The ACL changed since this flow was judged: judge it again, live.
                let v = judge(side, &ikey, iface, flow);
                entry.mark = v.mark;
                entry.verdict = v.drop as u8;
                entry.policy_gen = iface.policy_gen;
                count(Stat::Rejudged);
            }
            if counts_here(ctx, side) {
                account(entry, entry.direction(a_to_b), flow, now);
            }
            let drop = entry.verdict == VERDICT_DROP;
            stamp_mark(ctx, side, drop, entry.mark);
            return verdict_action(drop, Stat::PassCt, Stat::DropCt);
        }
    }
    if flow.related {
        // An ICMP error for no flow we know: nothing asked for it.
        count(Stat::DropUnsolicited);
        return TC_ACT_SHOT;
    }

    let v = judge(side, &ikey, iface, flow);
    let mut entry = CtValue {
        first_seen_ns: now,
        mark: v.mark,
        judge_ifindex: ifindex,
        policy_gen: iface.policy_gen,
        verdict: v.drop as u8,
        orig_is_a: a_to_b as u8,
        ..CtValue::default()
    };
    account(&mut entry, DIR_ORIG, flow, now);
    // A dropped flow gets its entry too: the flow log must show what was blocked.
    if CT.insert(&key, &entry, 0).is_err() {
        count(Stat::CtInsertFailed);
    } else {
        count(Stat::CtNew);
    }
    stamp_mark(ctx, side, v.drop, v.mark);
    verdict_action(v.drop, Stat::PassCt, Stat::DropAcl)
}

/// A packet from one app to another app of the NI crosses two app ports; the conntrack
/// counts it once, at the port it entered by. The from-app side leaves the connection
/// mark on the skb (as EVE's CONNMARK --restore-mark does); a packet that reaches the
/// to-app side still carrying one came from an app port of this bridge. Marks never
/// cross namespaces (veth scrubs them), so traffic from outside the NI is counted here.
#[inline(always)]
fn counts_here(ctx: &TcContext, side: Side) -> bool {
    side == Side::FromApp || unsafe { (*ctx.skb.skb).mark } == 0
}

#[inline(always)]
fn stamp_mark(ctx: &TcContext, side: Side, drop: bool, mark: u32) {
    if side == Side::FromApp && !drop {
        ctx.set_mark(mark);
    }
}

#[inline(always)]
fn judge(side: Side, ikey: &IfaceKey, iface: &IfaceInfo, flow: &Flow) -> Verdict {
    match side {
        Side::FromApp => acl::judge_from_app(unsafe { ACLS.get(ikey) }, iface, flow),
        Side::ToApp => acl::judge_toward_app(iface, flow),
    }
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
    if flow.proto == PROTO_TCP {
        let (state, flags) = ct::tcp_next(entry.tcp_state, entry.flags, flow.tcp_flags, dir);
        entry.tcp_state = state;
        entry.flags = flags;
    }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
