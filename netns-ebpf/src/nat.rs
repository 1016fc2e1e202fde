//! NAT programs on translating interfaces (TC ingress and egress): the NI side of each NI
//! veth (NI subnet -> NI veth address), the agent side of each NI veth (port-mapped flows
//! entering an NI get the agent-side address as source), and the uplinks (NI veth
//! addresses -> uplink address). Existing translations are applied in both directions;
//! egress creates source translations, ingress creates port-map destination translations.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_prandom_u32,
    macros::classifier,
    programs::TcContext,
};
use netns_ebpf_common::{
    acl::prefix_contains,
    fast as fast_path, guard,
    nat::{
        self, candidate_port, NatIface, NatKey, NatValue, PortmapKey, DOMAIN_AGENT, NAT_FLAG_INNER, NAT_FLAG_ORIG, REWRITE_DST, REWRITE_SRC,
    },
    packet::{self, Flow, Parsed, FRAG_LATER, FRAG_NONE},
    IfaceKey, Stat, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

use crate::{
    budget, clock, fast, frag,
    maps::{zone, NAT, NAT_IFACES, PORTMAPS},
    rewrite,
    skb::{count, ifindex, skb_mark, vlan_tagged, Skb},
};

/// Linear probes per new source translation: a whole small range, or enough to find a
/// free port in a large one.
const PORT_ATTEMPTS: u32 = 128;

#[classifier]
pub fn nat_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, false)
}

#[classifier]
pub fn nat_egress(ctx: TcContext) -> i32 {
    handle(&ctx, true)
}

#[inline(always)]
fn handle(ctx: &TcContext, egress: bool) -> i32 {
    let mark = skb_mark(ctx);
    if egress && mark == fast_path::SNAT_DONE_MARK {
        // Translated by the fast path that sent it here (`fast::to_uplink`), as this
        // program would have translated it: nothing is left to do but drop the mark.
        ctx.set_mark(0);
        return TC_ACT_OK;
    }
    // A tagged frame on an uplink is another VLAN's: not ours to translate (the kernel
    // hands it to that VLAN's interface, or drops it).
    if vlan_tagged(ctx) {
        return TC_ACT_OK;
    }
    let mut flow = match packet::parse(&Skb(ctx)) {
        Ok(Parsed::Ipv4(f)) if f.related => return icmp_error(ctx, egress, &f),
        Ok(Parsed::Ipv4(f)) if !egress && mark == fast_path::NI_NAT_DONE_MARK && zone(ctx) != DOMAIN_AGENT => {
            // Translated back to its app's address at the uplink, as this program would
            // have translated it (`fast::from_uplink_through_ni`): on to the app. (Its
            // parse is this one: another `Flow` in this frame was one too many for 6.1's
            // 512 bytes of stack across calls.)
            ctx.set_mark(0);
            return fast::to_app(ctx.skb.skb, zone(ctx), &f, true);
        }
        Ok(Parsed::Ipv4(f)) => f,
        // ARP, IPv6 and what does not parse are not ours to translate; the stack (or the
        // app ports) deal with them.
        Ok(_) => return TC_ACT_OK,
        Err(_) => {
            count(Stat::NatMalformed);
            return TC_ACT_OK;
        }
    };
    let zone = zone(ctx);
    if !egress && nat::outside_claims_inside(zone, ifindex(ctx), &flow) {
        count(Stat::DropUplinkSpoof);
        return TC_ACT_SHOT;
    }
    let now = clock::now_ns();
    // Fragments follow their first, on an interface that translates: a later one whose
    // first was not seen is dropped, never passed untranslated (it would leak the NI's
    // addresses).
    if flow.frag != FRAG_NONE {
        if unsafe { NAT_IFACES.get(IfaceKey { zone, ifindex: ifindex(ctx) }) }.is_none() {
            return TC_ACT_OK;
        }
        if frag::follow(zone, &mut flow, now).is_err() {
            return TC_ACT_SHOT;
        }
    }
    let key = NatKey::of(zone, &flow);
    let entry = NAT.get_ptr_mut(&key);
    if !egress && zone == DOMAIN_AGENT {
        // At an agent-side veth's ingress, from an NI: the fast path out of the uplink.
        // Before this interface's own config is read: what the packet gets is the
        // uplink's translation, which that uplink's config decides (`fast::uplink_hop`
        // reads it), and the hop is taken only at the NI's own agent-side veth. (One
        // lookup less per packet out.)
        match entry {
            // Leaving an NI for the uplink that translates it.
            Some(v) if fast_path::leaves_translated(unsafe { &*v }, &flow) => return fast::to_uplink(ctx, &key, v, &flow),
            // A new flow leaving an NI: for the uplink's egress to translate.
            None if fast_path::leaves_untranslated(&flow) => {
                if let Some(action) = fast::new_to_uplink(ctx, &flow) {
                    return action;
                }
            }
            _ => {}
        }
    }
    let Some(nif) = (unsafe { NAT_IFACES.get(IfaceKey { zone, ifindex: ifindex(ctx) }) }) else {
        return TC_ACT_OK;
    };
    // As the kernel's NAT hooks: source rewrites on the way out (POSTROUTING),
    // destination rewrites on the way in (PREROUTING). A flow's entries are visible on
    // every interface of the domain, and applying one at the wrong side would, e.g., give
    // a packet entering from an NI the uplink's own (local) address as source.
    if let Some(v) = entry.filter(|v| (unsafe { (**v).rewrite } == REWRITE_SRC) == egress) {
        let v = unsafe { &mut *v };
        // In use from now on, before its reply half is looked at (see
        // `nat::may_have_lost_reply_half`).
        let idle = now.saturating_sub(v.last_seen_ns);
        v.last_seen_ns = now;
        if egress
            && v.flags & NAT_FLAG_ORIG != 0
            && nat::may_have_lost_reply_half(flow.proto, flow.tcp_flags, idle)
            && !reply_half_whole(&key, v, &flow, now)
        {
            // The reply tuple is another flow's now: this flow gets a translation anew.
            let _ = NAT.remove(&key);
            return new_snat(ctx, &mut flow, &key, nif, now);
        }
        note_flags(v, &flow);
        let mut v = *v;
        if !egress
            && zone == DOMAIN_AGENT
            && v.flags & NAT_FLAG_INNER != 0
            && nif.uplink_ifindex == ifindex(ctx)
            && fast_path::returns_translated(&v, &flow)
        {
            // A reply whose translation here carries its NI's: translated back through both.
            if let Some(action) = fast::from_uplink_through_ni(ctx, &mut flow, &mut v) {
                return action;
            }
        }
        let action = finish(ctx, &mut flow, &v, Stat::NatRewrite);
        if action == TC_ACT_OK && !egress && fast_path::returns_translated(&v, &flow) {
            // A reply, now addressed as its flow's inside end: the fast path may take
            // it on from here (into the NI, or on to the app). In the agent's netns only
            // from an uplink: a reply translated back at an agent-side veth is a
            // hairpin's, whose port map gives it its address back at the other NI's
            // agent-side veth's egress, on the kernel's path.
            return match zone {
                DOMAIN_AGENT if nif.uplink_ifindex == ifindex(ctx) => fast::from_uplink(ctx, &flow),
                DOMAIN_AGENT => action,
                _ => fast::to_app(ctx.skb.skb, zone, &flow, false),
            };
        }
        return action;
    }
    if flow.frag == FRAG_LATER {
        // Its datagram was not translated here: neither is it. But where this egress
        // translates its source, its first fragment was refused a translation (no port,
        // no share left) and dropped: this one must not leave with the address it hides.
        if egress && starts_translation(nif, &flow, &key) {
            count(Stat::DropFragment);
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK;
    }
    if egress {
        if starts_translation(nif, &flow, &key) {
            return new_snat(ctx, &mut flow, &key, nif, now);
        }
    } else if nif.portmaps == 1 {
        let pk = PortmapKey { domain: zone, addr: flow.dst, port: flow.dport, proto: flow.proto, _pad: 0 };
        if let Some(t) = unsafe { PORTMAPS.get(pk) } {
            if t.uplink_ifindex == nif.uplink_ifindex {
                if !budget::take_translation(nat::owner_zone(zone, [flow.src, flow.dst, t.addr]), 2) {
                    count(Stat::DropZoneFull);
                    return TC_ACT_SHOT;
                }
                let fwd = NatValue::new(now, t.mark, t.addr, t.port, REWRITE_DST, NAT_FLAG_ORIG);
                let rev_key = key.rewritten(&fwd).reversed();
                let rev = NatValue::new(now, 0, flow.dst, flow.dport, REWRITE_SRC, 0);
                if NAT.insert(&rev_key, &rev, BPF_ANY as u64).is_err() || NAT.insert(&key, &fwd, BPF_ANY as u64).is_err() {
                    count(Stat::NatNoPort);
                    return TC_ACT_SHOT;
                }
                return finish(ctx, &mut flow, &fwd, Stat::PortmapNew);
            }
        }
    }
    TC_ACT_OK
}

/// What the fast path that skips the NI veth's egress (`fast::past_ni_veth`) finds of
/// a packet's source translation there.
pub enum AtNiVeth {
    /// Applied as the egress would apply it (`apply_source_in_use`), or the packet
    /// dropped as there (malformed): the program's verdict.
    Applied(i32),
    /// The flow has none, and the egress would make one: `make_source` makes it.
    ToMake,
    /// Neither: the packet takes the egress, nothing was touched.
    Left,
}

/// For the fast path that skips the NI veth's egress (`fast::past_ni_veth`): the
/// packet's source translation there (`key`: the packet's, in the NI's domain).
#[inline(always)]
pub fn known_source(ctx: &TcContext, zone: u32, veth_ifindex: u32, key: &NatKey, to: &mut NatValue, flow: &Flow) -> AtNiVeth {
    // (Before the lookups: `apply_source_in_use` would refuse any other protocol.)
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return AtNiVeth::Left;
    }
    match NAT.get_ptr_mut(key) {
        // The veth's config is not read for a translation in use (one lookup less per
        // packet out): a source translation in the NI's domain is made only where the
        // config says the veth translates (its egress, `make_source`), and the agent
        // turns the NI's fast path off before it removes that config
        // (`Maps::remove_zone`).
        Some(v) => match apply_source_in_use(ctx, key, unsafe { &mut *v }, to, flow) {
            Some(action) => AtNiVeth::Applied(action),
            None => AtNiVeth::Left,
        },
        None => match unsafe { NAT_IFACES.get(IfaceKey { zone, ifindex: veth_ifindex }) } {
            Some(nif) if starts_translation(nif, flow, key) => AtNiVeth::ToMake,
            _ => AtNiVeth::Left,
        },
    }
}

/// For the fast path that skips the NI veth's egress (`fast::new_past_ni_veth`), after
/// `known_source` said `ToMake`: the new flow's source translation there, made and
/// applied as `handle` would (`claim_source`; `t`: the caller's per-CPU scratch). Some:
/// translated, or dropped as there (no port or no share left, malformed); None: the
/// interface is no longer one that translates, nothing was touched.
#[inline(always)]
pub fn make_source(ctx: &TcContext, zone: u32, veth_ifindex: u32, key: &NatKey, t: &mut SourceScratch, flow: &Flow) -> Option<i32> {
    // (Looked up again, not passed from `known_source`: the two are apart, see
    // `fast::new_past_ni_veth`.)
    let nif = unsafe { NAT_IFACES.get(IfaceKey { zone, ifindex: veth_ifindex }) }?;
    Some(match claim_source(flow, key, nif, clock::now_ns(), t) {
        Ok(stat) => rewrite_source(ctx, key, &t.to, flow, stat),
        Err(why) => refused(why),
    })
}

/// A new flow's packet that gets no translation (`why`: no port, no share left): dropped
/// and counted.
#[inline(always)]
fn refused(why: Stat) -> i32 {
    count(why);
    TC_ACT_SHOT
}

/// For the fast path that applies an egress's source translation before the packet
/// reaches that egress: `v` (the entry under `key`, the packet's tuple in that domain),
/// applied as `handle` would apply it there, when it needs nothing else: the original
/// half of an app's own TCP or UDP flow, in use (not a packet that may start a new flow
/// on a pair the sweep may have halved: that one takes the egress's program, where
/// `handle` checks the reply half). Some: translated (or dropped, a malformed packet) as
/// there; None: not so, and nothing was touched. `to`: where the translation's address
/// and port are copied before the rewrite reads them (the caller's per-CPU scratch): an
/// LRU entry the sweep takes may be reused by another CPU at once, and the checksums
/// and the bytes written must come from one translation.
#[inline(always)]
pub fn apply_source_in_use(ctx: &TcContext, key: &NatKey, v: &mut NatValue, to: &mut NatValue, flow: &Flow) -> Option<i32> {
    if flow.proto != PROTO_TCP && flow.proto != PROTO_UDP {
        return None;
    }
    let now = clock::now_ns();
    if v.rewrite != REWRITE_SRC
        || v.flags & NAT_FLAG_ORIG == 0
        || nat::may_have_lost_reply_half(flow.proto, flow.tcp_flags, now.saturating_sub(v.last_seen_ns))
    {
        return None;
    }
    used_by(v, flow, now);
    (to.addr, to.port) = (v.addr, v.port);
    Some(rewrite_source(ctx, key, to, flow, Stat::NatRewrite))
}

/// An entry a packet of its flow uses (at `now`): in use from then, and its flags as
/// the packet's TCP flags leave them (`note_flags`).
#[inline(always)]
pub fn used_by(v: &mut NatValue, flow: &Flow, now: u64) {
    v.last_seen_ns = now;
    note_flags(v, flow);
}

/// An entry's flags after a packet of its flow (written only when they change).
#[inline(always)]
fn note_flags(v: &mut NatValue, flow: &Flow) {
    let flags = nat::flags_after(v.flags, flow.proto, flow.tcp_flags);
    if flags != v.flags {
        v.flags = flags;
    }
}

/// The fast path's rewrite of a TCP or UDP packet's source (its tuple `key`) to `to`'s,
/// counted as `stat` (or, malformed, dropped) as `finish` would count it. (A source
/// translation carries no mark: `finish` would set none.)
#[inline(always)]
fn rewrite_source(ctx: &TcContext, key: &NatKey, to: &NatValue, flow: &Flow, stat: Stat) -> i32 {
    if rewrite::tcp_udp_source(ctx, flow.l4_off, key, to).is_err() {
        count(Stat::NatMalformed);
        return TC_ACT_SHOT;
    }
    count(stat);
    TC_ACT_OK
}

/// An ICMP error quoting a packet of a translated flow goes back the way that flow came.
#[inline(always)]
fn icmp_error(ctx: &TcContext, egress: bool, quoted: &Flow) -> i32 {
    let zone = zone(ctx);
    if unsafe { NAT_IFACES.get(IfaceKey { zone, ifindex: ifindex(ctx) }) }.is_none() {
        return TC_ACT_OK;
    }
    let key = NatKey::of(zone, quoted).reversed();
    let Some(v) = (unsafe { NAT.get(&key) }) else { return TC_ACT_OK };
    if (v.rewrite == REWRITE_SRC) != egress {
        return TC_ACT_OK;
    }
    // Only an error that goes to the quoted packet's sender is that flow's; anything
    // else would be carried through both translations to an address no ACL allowed.
    if !guard::icmp_error_fits(quoted, false) {
        count(Stat::DropIcmpMismatch);
        return TC_ACT_SHOT;
    }
    if rewrite::apply_icmp_error(ctx, quoted, v).is_err() {
        count(Stat::NatMalformed);
        return TC_ACT_SHOT;
    }
    count(Stat::NatRewrite);
    TC_ACT_OK
}

/// Whether this egress (`nif`) gives the packet a source translation it has none of: the
/// interface translates the range the packet comes from, the packet is neither from
/// the translation's own address nor to the destination left untranslated, and it is
/// no reply of a flow translated in this domain.
#[inline(always)]
fn starts_translation(nif: &NatIface, flow: &Flow, key: &NatKey) -> bool {
    nif.snat == 1
        && flow.src != nif.snat_ip
        && flow.dst != nif.snat_except_dst
        && prefix_contains(nif.snat_from, nif.snat_from_len, flow.src)
        && !is_reply(key)
}

/// A packet whose reverse is the original direction of a translation made in this
/// domain is that flow's reply (already translated back where it came in): it must not
/// be translated anew on its way out.
#[inline(always)]
fn is_reply(key: &NatKey) -> bool {
    match unsafe { NAT.get(key.reversed()) } {
        Some(v) => v.flags & NAT_FLAG_ORIG != 0,
        None => false,
    }
}

/// Whether the source translation `v` (the original half, under `key`) still has its
/// reply half; one the sweep took (see `nat::may_have_lost_reply_half`) is made again. False: the
/// reply tuple is another flow's.
#[inline(always)]
fn reply_half_whole(key: &NatKey, v: &NatValue, flow: &Flow, now: u64) -> bool {
    let rev_key = key.rewritten(v).reversed();
    match unsafe { NAT.get(&rev_key) } {
        Some(r) => nat::is_reply_half(r, flow),
        None => {
            let rev = NatValue::new(now, 0, flow.src, flow.sport, REWRITE_DST, 0);
            // (Or this flow's packet on another CPU made it again just now.)
            NAT.insert(&rev_key, &rev, BPF_NOEXIST as u64).is_ok()
                || unsafe { NAT.get(&rev_key) }.is_some_and(|r| nat::is_reply_half(r, flow))
        }
    }
}

/// A new source translation, made and applied; none to be had: the flow is dropped and
/// counted.
#[inline(always)]
fn new_snat(ctx: &TcContext, flow: &mut Flow, key: &NatKey, nif: &NatIface, now: u64) -> i32 {
    let mut t = SourceScratch::default();
    match claim_source(flow, key, nif, now, &mut t) {
        Ok(stat) => {
            if stat == Stat::NatNew && key.domain == DOMAIN_AGENT {
                carry_inner(&t.reply_key, flow);
            }
            finish(ctx, flow, &t.to, stat)
        }
        Err(why) => refused(why),
    }
}

/// A new translation in the agent's domain of a flow from an NI (its packet `flow`, from
/// the NI veth's address, before it leaves): its reply half (under `reply_key`) carries
/// the flow's reply translation in the NI (`nat::inner_of`; the NI's reply half, its key
/// the packet's tuple turned round in the NI's domain), so the fast path translates a
/// reply back through both at the uplink (`fast::from_uplink_through_ni`). Written before
/// the packet leaves: no reply can use the entry yet.
#[inline(always)]
fn carry_inner(reply_key: &NatKey, flow: &Flow) {
    let Some(zone) = fast_path::ni_end_zone(flow.src) else { return };
    let ni_reply_key = nat::across(&NatKey::of(DOMAIN_AGENT, flow), zone);
    let Some((port, host)) = (unsafe { NAT.get(&ni_reply_key) }).and_then(nat::inner_of) else { return };
    if let Some(r) = NAT.get_ptr_mut(reply_key) {
        let r = unsafe { &mut *r };
        (r.inner_port, r.inner_host) = (port, host);
        r.flags |= NAT_FLAG_INNER;
    }
}

/// A source translation's entries: the one a packet is translated by (`to`: a copy of
/// the map's, `apply_source_in_use`, or a new one, `claim_source`), and for a new one
/// its reply half's key and entry. Written field by field, as the fast path keeps it in
/// its per-CPU scratch, off the from-app program's stack (`fast::FibScratch`; a
/// whole-struct store would call `memset` for `NatValue`'s padding, a BPF function
/// whose frame 6.1 counts too).
#[repr(C)]
#[derive(Default)]
pub struct SourceScratch {
    pub to: NatValue,
    reply_key: NatKey,
    reply: NatValue,
}

/// Finds a free (address, port) for this remote and records both directions (`t`).
/// Ok says how the packet's translation counts: `NatNew`, or `NatClash` when the flow's
/// first packet on another CPU, which met the same empty map, recorded its translation
/// first: this packet takes that one (in `t.to`) and gives back the port it claimed, so
/// that a flow never leaves by two sources. Err says why there is none (the NI's share
/// of the map is used up, no port is free, or the tuple is another flow's).
#[inline(always)]
fn claim_source(flow: &Flow, key: &NatKey, nif: &NatIface, now: u64, t: &mut SourceScratch) -> Result<Stat, Stat> {
    let has_ports = flow.proto == PROTO_TCP || flow.proto == PROTO_UDP || (flow.proto == PROTO_ICMP && flow.icmp_echo);
    if !budget::take_translation(nat::owner_zone(key.domain, [flow.src, flow.dst, nif.snat_ip]), 2) {
        return Err(Stat::DropZoneFull);
    }
    let random = unsafe { bpf_get_prandom_u32() };
    let r = &mut t.reply;
    (r.last_seen_ns, r.mark, r.addr, r.port, r.rewrite, r.flags, r.inner_port, r.inner_host) =
        (now, 0, flow.src, flow.sport, REWRITE_DST, 0, 0, [0; 2]);
    let f = &mut t.to;
    (f.last_seen_ns, f.mark, f.addr, f.rewrite, f.flags, f.inner_port, f.inner_host) =
        (now, 0, nif.snat_ip, REWRITE_SRC, NAT_FLAG_ORIG, 0, [0; 2]);
    for attempt in 0..PORT_ATTEMPTS {
        t.to.port = if has_ports { candidate_port(random, attempt, nif.port_min, nif.port_max) } else { flow.sport };
        key.rewritten(&t.to).reversed().write_to(&mut t.reply_key);
        // The reply tuple is what must be unique: claim it first.
        if NAT.insert(&t.reply_key, &t.reply, BPF_NOEXIST as u64).is_ok() {
            // Before the flow's entry is there: once it is, a packet of the flow on
            // another CPU may take it (`NatClash`) and make the flow's own translation at
            // the uplink, which this would then remove.
            if key.domain != DOMAIN_AGENT {
                forget_stale_uplink(&mut t.reply_key);
            }
            if NAT.insert(key, &t.to, BPF_NOEXIST as u64).is_ok() {
                return Ok(Stat::NatNew);
            }
            // Another CPU's packet of this flow got there first (or the tuple is another
            // flow's): the reply tuple claimed here is nobody's.
            let _ = NAT.remove(&t.reply_key);
            break;
        }
        if !has_ports {
            // Its one reply tuple is taken: by another flow, or by this flow's packet on
            // another CPU.
            break;
        }
    }
    match unsafe { NAT.get(key) } {
        Some(v) if v.rewrite == REWRITE_SRC && v.flags & NAT_FLAG_ORIG != 0 => {
            (t.to.addr, t.to.port) = (v.addr, v.port);
            Ok(Stat::NatClash)
        }
        _ => Err(Stat::NatNoPort),
    }
}

/// For a new translation in an NI, whose reply half (under `k`, in the callers' scratch,
/// off the stack; given back as it came) it has just claimed: where that reply tuple
/// leads to a translation in the agent's domain (`nat::across`: the same flow leaving the
/// NI) whose reply half carries an app (`carry_inner`), that translation is an older
/// flow's whose NI reply half is gone (an LRU eviction, or a sweep that judged the two
/// pairs apart): both its halves are removed, so that the new flow gets a translation of
/// its own at the uplink and none of its replies reaches the older flow's app. (One that
/// carries none is not the NI's apps': the NI's own, e.g. charon's from the veth's
/// address.) The keys are worked out in place (`NatKey::turn_across`,
/// `turn_to_partner`), to keep a second `NatKey` off the stack.
#[inline(always)]
fn forget_stale_uplink(k: &mut NatKey) {
    let zone = k.domain;
    k.turn_across(DOMAIN_AGENT);
    if let Some(v) = (unsafe { NAT.get(&*k) }).filter(|v| v.rewrite == REWRITE_SRC && v.flags & NAT_FLAG_ORIG != 0) {
        // The original half's tuple, which its partner's key overwrites.
        let (ni_end, ni_port, remote, remote_port) = (k.src, k.sport, k.dst, k.dport);
        k.turn_to_partner(v);
        let stale = unsafe { NAT.get(&*k) }.is_some_and(|r| r.flags & NAT_FLAG_INNER != 0);
        if stale {
            let _ = NAT.remove(&*k);
        }
        (k.src, k.dst, k.sport, k.dport) = (ni_end, remote, ni_port, remote_port);
        if stale {
            let _ = NAT.remove(&*k);
        }
    }
    k.turn_across(zone);
}

#[inline(always)]
fn finish(ctx: &TcContext, flow: &mut Flow, v: &NatValue, stat: Stat) -> i32 {
    if rewrite::apply(ctx, flow, v).is_err() {
        count(Stat::NatMalformed);
        return TC_ACT_SHOT;
    }
    if v.mark != 0 {
        ctx.set_mark(v.mark);
    }
    count(stat);
    TC_ACT_OK
}
