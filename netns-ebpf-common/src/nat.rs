//! NAT state: one LRU map for every translation domain (an NI's netns = its zone, the
//! agent's netns = domain 0). A translated connection has two entries, one per direction,
//! each keyed by the tuple as it arrives and saying what to rewrite; every NAT program of
//! the domain consults the same map, so a reply is translated whichever interface it takes.

use crate::{acl::prefix_contains, chosen_ifindex_zone, packet::Flow, Ipv4, VETH_NET, VETH_NET_LEN};

/// The agent's own netns.
pub const DOMAIN_AGENT: u32 = 0;
/// Whether a packet arriving at interface `ifindex` of zone `zone` comes from outside (an
/// uplink: in the agent's netns, the NAT programs sit on uplinks, whose ifindex the kernel
/// chose, and on NI veths, whose ifindex the agent chose) and names an address of the NI veths'
/// network (169.254.100.0/24) as its source or destination. Those live only inside the
/// device: from one of them, the agent's routing (the rule `from` an agent-side address)
/// would send the packet into an NI, whose ports take the agent's addresses for the
/// device's own (EVE-initiated flows pass); to one, it would reach the NI's netns and
/// what listens there.
#[inline(always)]
pub fn outside_claims_inside(zone: u32, ifindex: u32, flow: &Flow) -> bool {
    zone == DOMAIN_AGENT
        && chosen_ifindex_zone(ifindex).is_none()
        && (prefix_contains(VETH_NET, VETH_NET_LEN, flow.outer_src) || prefix_contains(VETH_NET, VETH_NET_LEN, flow.outer_dst))
}

/// NAT_V2's size: four entries per flow that crosses both stages (a pair in the NI, a
/// pair in the agent's netns), so it holds as many such flows as the conntrack map
/// (`ct::CT_MAX_ENTRIES`). At half this, one app's ephemeral ports (28,232, each a flow
/// that its reused tuples keep translated alike) took an NI's whole share.
pub const NAT_MAX_ENTRIES: u32 = 262_144;
/// NATIF_V1's size: one entry per uplink and two per local or VPN NI (its veth's ends).
pub const NAT_IFACES_MAX_ENTRIES: u32 = 256;
/// PORTMAP_V1's size: two entries per port-map ACE (the uplink's domain and the NI's).
pub const PORTMAP_MAX_ENTRIES: u32 = 4096;

pub const REWRITE_SRC: u8 = 1;
pub const REWRITE_DST: u8 = 2;

/// A directional tuple as seen on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    pub domain: u32,
    pub src: Ipv4,
    pub dst: Ipv4,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl NatKey {
    #[inline(always)]
    pub fn of(domain: u32, f: &Flow) -> NatKey {
        NatKey { domain, src: f.src, dst: f.dst, sport: f.sport, dport: f.dport, proto: f.proto, _pad: [0; 3] }
    }

    /// The key of the same tuple after `rewrite` was applied to it.
    #[inline(always)]
    pub fn rewritten(&self, v: &NatValue) -> NatKey {
        let mut k = *self;
        k.rewrite(v);
        k
    }

    /// `rewritten`, in place.
    #[inline(always)]
    pub fn rewrite(&mut self, v: &NatValue) {
        if v.rewrite == REWRITE_SRC {
            self.src = v.addr;
            self.sport = v.port;
        } else {
            self.dst = v.addr;
            self.dport = v.port;
        }
        if self.proto == crate::PROTO_ICMP {
            // ICMP echo: the identifier is both "ports".
            self.sport = v.port;
            self.dport = v.port;
        }
    }

    /// This key written into `out` field by field, its padding left as it is there: the
    /// programs keep some keys in per-CPU scratch, where a whole-struct store would call
    /// `memset` for the padding (a BPF function, whose frame 6.1 counts with its caller's).
    #[inline(always)]
    pub fn write_to(&self, out: &mut NatKey) {
        (out.domain, out.src, out.dst, out.sport, out.dport, out.proto) =
            (self.domain, self.src, self.dst, self.sport, self.dport, self.proto);
    }

    /// The key the reply to this (already rewritten) tuple arrives with.
    #[inline(always)]
    pub fn reversed(&self) -> NatKey {
        let mut k = NatKey { _pad: [0; 3], ..*self };
        k.reverse();
        k
    }

    /// `reversed`, in place.
    #[inline(always)]
    pub fn reverse(&mut self) {
        (self.src, self.dst, self.sport, self.dport) = (self.dst, self.src, self.dport, self.sport);
    }

    /// `partner(self, v)`, in place (the programs keep keys in per-CPU scratch: a second
    /// key on the stack is one too many for 6.1's 512 bytes across calls).
    #[inline(always)]
    pub fn turn_to_partner(&mut self, v: &NatValue) {
        self.rewrite(v);
        self.reverse();
    }

    /// `across(self, domain)`, in place.
    #[inline(always)]
    pub fn turn_across(&mut self, domain: u32) {
        self.reverse();
        self.domain = domain;
    }
}

/// TCP: a FIN went through (a SYN without ACK clears it: the tuple is reused).
pub const NAT_FLAG_CLOSING: u8 = 1 << 0;
/// The entry of the direction that created the translation (the other is its reply).
pub const NAT_FLAG_ORIG: u8 = 1 << 1;
/// A packet after the one that created the pair used this entry: on the reply entry,
/// the flow was answered.
pub const NAT_FLAG_USED: u8 = 1 << 2;
/// TCP: the latest packet was an RST (any later packet clears it: an RST the endpoints
/// ignore, e.g. a blind attacker's, must not shorten the flow's life for long).
pub const NAT_FLAG_RST: u8 = 1 << 3;
/// `NatValue::inner_port` and `inner_host` hold the NI's reply translation of the flow.
pub const NAT_FLAG_INNER: u8 = 1 << 4;
/// TCP: the latest packet was a SYN without ACK: a connection opens on the tuple (its
/// sender's next packet clears it). Until the other half sees a packet after it, the
/// translation lives as an unanswered one (`syn_unanswered`): a client that opens a
/// connection again on a tuple whose far end is gone (after a half close, or on an
/// established flow that died silently) would otherwise keep the old connection's
/// answer, and the pair its 5 days, long after the conntrack entry.
pub const NAT_FLAG_SYN_SENT: u8 = 1 << 5;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatValue {
    pub last_seen_ns: u64,
    /// Connection mark to stamp on the packet (port maps: the ACE that exposes the app).
    pub mark: u32,
    pub addr: Ipv4,
    pub port: u16,
    pub rewrite: u8,
    pub flags: u8,
    /// With `NAT_FLAG_INNER`, on the reply half of a translation at an uplink: the same
    /// flow's reply translation in its NI (`inner_of`), the app's port and the last two
    /// bytes of its address (the first two are its NI subnet's, a /16 or longer), so a
    /// reply is translated back through both at the uplink (the fast path's
    /// `from_uplink_through_ni`). (This was padding: the flag, not these bytes, says
    /// whether they hold anything.)
    pub inner_port: u16,
    pub inner_host: [u8; 2],
}

impl NatValue {
    /// An entry that carries no inner translation.
    #[inline(always)]
    pub fn new(last_seen_ns: u64, mark: u32, addr: Ipv4, port: u16, rewrite: u8, flags: u8) -> NatValue {
        NatValue { last_seen_ns, mark, addr, port, rewrite, flags, inner_port: 0, inner_host: [0; 2] }
    }
}

/// What a NAT program does on one interface; keyed by (domain, ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatIface {
    /// New flows leaving here from `snat_from/snat_from_len` get their source rewritten
    /// to `snat_ip` with a port from `port_min..=port_max` (`snat` = 1).
    pub snat_ip: Ipv4,
    pub snat_from: Ipv4,
    /// Traffic to this address is never translated: on an NI veth, the agent-side
    /// address (replies to connections the agent's netns started toward an app).
    pub snat_except_dst: Ipv4,
    /// Port maps apply only when their `uplink_ifindex` equals this (the uplink itself,
    /// or the uplink of the NI behind an agent-side veth: hairpin stays on one uplink).
    pub uplink_ifindex: u32,
    pub port_min: u16,
    pub port_max: u16,
    pub snat_from_len: u8,
    pub snat: u8,
    /// 1: new flows arriving here are looked up in the port maps.
    pub portmaps: u8,
    pub _pad: u8,
}

impl NatIface {
    /// An interface that source-NATs `snat_from` (prefix, length) to `snat_ip` with ports
    /// from `ports` (except toward `snat_except_dst`) and applies the port maps of
    /// `uplink_ifindex`.
    pub fn new(snat_ip: Ipv4, snat_from: (Ipv4, u8), snat_except_dst: Ipv4, uplink_ifindex: u32, ports: (u16, u16)) -> NatIface {
        NatIface {
            snat_ip,
            snat_from: snat_from.0,
            snat_except_dst,
            uplink_ifindex,
            port_min: ports.0,
            port_max: ports.1,
            snat_from_len: snat_from.1,
            snat: 1,
            portmaps: 1,
            _pad: 0,
        }
    }
}

/// Key of a port map: the address and port it listens on in its domain.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortmapKey {
    pub domain: u32,
    pub addr: Ipv4,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortmapTarget {
    pub addr: Ipv4,
    pub port: u16,
    pub _pad: u16,
    /// Mark of the exposing ACE (app number, user bit, ACE id), stamped on the packets so
    /// the app port lets the flow in; 0 in the agent's domain.
    pub mark: u32,
    pub uplink_ifindex: u32,
}

/// Candidate `attempt` (0-based) for a new source port: a random start, then linear.
/// Linear probing covers the whole range when `attempts >= range size`.
#[inline(always)]
pub fn candidate_port(random: u32, attempt: u32, min: u16, max: u16) -> u16 {
    let size = (max as u32).saturating_sub(min as u32) + 1;
    (min as u32 + (random.wrapping_add(attempt)) % size) as u16
}

/// The flags of a packet's TCP header applied to the entry it used.
#[inline(always)]
pub fn flags_after(flags: u8, proto: u8, tcp_flags: u8) -> u8 {
    let mut f = flags | NAT_FLAG_USED;
    if proto == crate::PROTO_TCP {
        use crate::packet::{TCP_FIN, TCP_RST, TCP_SYN};
        if tcp_flags & TCP_RST != 0 {
            f |= NAT_FLAG_RST;
        } else {
            f &= !NAT_FLAG_RST;
        }
        // A SYN opens the tuple again: the client's on the original half, the server's
        // SYN-ACK on the reply half (which never sees a bare SYN: keeping the old flow's
        // FIN there held the new flow's translation to the closing 2 minutes).
        if tcp_flags & TCP_FIN != 0 {
            f |= NAT_FLAG_CLOSING;
        } else if tcp_flags & TCP_SYN != 0 {
            f &= !NAT_FLAG_CLOSING;
        }
        if tcp_flags & (TCP_SYN | crate::packet::TCP_ACK) == TCP_SYN {
            f |= NAT_FLAG_SYN_SENT;
        } else {
            f &= !NAT_FLAG_SYN_SENT;
        }
    }
    f
}

/// Whether a packet that uses a source translation's original entry may be a new flow
/// on the old tuple (a TCP SYN, any other protocol's packet): its translation's reply
/// half is checked then. The agent's sweep judges a pair as it was when it read the map;
/// a new flow reusing the tuple while it sweeps can keep the original half it refreshed
/// and lose the reply half, and its answers would then find no translation.
#[inline(always)]
pub fn may_reuse_tuple(proto: u8, tcp_flags: u8) -> bool {
    use crate::packet::{TCP_ACK, TCP_SYN};
    proto != crate::PROTO_TCP || tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Whether the reply half of a translation may be gone when a packet uses its original
/// half, which had been idle `idle_ns` before it (the packet's time written first, so
/// that a sweep judging the pair afterwards sees it in use): `may_reuse_tuple`, and the
/// pair could have been past its time. The sweep only takes pairs past their time, the
/// original half idle too, so a flow in use pays no extra lookup per packet.
/// The check starts `CLOCK_SLACK_NS` early: the programs' clock (CLOCK_MONOTONIC_COARSE)
/// lags the sweep's by up to a tick, so the sweep may find a pair past its time while a
/// program still sees it a tick short.
#[inline(always)]
pub fn may_have_lost_reply_half(proto: u8, tcp_flags: u8, idle_ns: u64) -> bool {
    may_reuse_tuple(proto, tcp_flags) && idle_ns + CLOCK_SLACK_NS >= shortest_pair_timeout_ns(proto)
}

/// How far apart the programs' clock and the agent's may be when both read "now": the
/// programs read CLOCK_MONOTONIC_COARSE (`bpf_ktime_get_coarse_ns`, a tick behind at
/// most; the fine clock cost a TSC read per call, several per packet), the agent
/// CLOCK_MONOTONIC. A second is many ticks at any HZ.
pub const CLOCK_SLACK_NS: u64 = 1_000_000_000;

/// The shortest `pair_idle_timeout_ns` of protocol `proto`, whatever its flags.
#[inline(always)]
pub fn shortest_pair_timeout_ns(proto: u8) -> u64 {
    const SEC: u64 = 1_000_000_000;
    match proto {
        crate::PROTO_TCP => 120 * SEC,
        crate::PROTO_UDP | crate::PROTO_ICMP => 30 * SEC,
        _ => 600 * SEC,
    }
}

/// Whether `reply` is the reply half of the source translation that `flow` (as it
/// leaves, untranslated) uses: it gives the answers back to the flow's source.
#[inline(always)]
pub fn is_reply_half(reply: &NatValue, flow: &Flow) -> bool {
    reply.rewrite == REWRITE_DST && reply.flags & NAT_FLAG_ORIG == 0 && reply.addr == flow.src && reply.port == flow.sport
}

/// What the uplink's reply half of a flow carries of the flow's reply half in its NI
/// (`ni_reply`), for `NatValue::inner_port` and `inner_host`: a plain source
/// translation's (no mark to stamp) app port and the last two bytes of the app's
/// address. None: not such a half.
#[inline(always)]
pub fn inner_of(ni_reply: &NatValue) -> Option<(u16, [u8; 2])> {
    (is_reply_source(ni_reply) && ni_reply.mark == 0).then_some((ni_reply.port, [ni_reply.addr[2], ni_reply.addr[3]]))
}

/// The other entry of a translation: each entry, rewritten by its own value and turned
/// around, is its partner's key.
#[inline(always)]
pub fn partner(key: &NatKey, v: &NatValue) -> NatKey {
    key.rewritten(v).reversed()
}

/// Idle time after which a translation (both entries at once, idle = since the later of
/// their packets) goes: TCP until answered (SYN_SENT) or once closing 120 s, answered 5
/// days; UDP 30 s, answered 120 s; ICMP 30 s; others 600 s. An RST shortens the life to
/// 120 s until another packet shows the flow goes on (no window check here: a blind
/// attacker's RST must not end an idle flow within seconds). A closed TCP flow keeps
/// its translation 120 s, though its conntrack entry goes after 10 s
/// (`ct::CLOSED_TIMEOUT_NS`): the far end may hold the tuple in TIME_WAIT (60 s on
/// Linux), and a new flow given the same translated tuple meanwhile, with an unrelated
/// sequence number, would be refused there. The same client tuple reused takes the
/// same translation (and the conntrack judges it anew).
#[inline(always)]
pub fn pair_idle_timeout_ns(proto: u8, flags: u8, answered: bool) -> u64 {
    const SEC: u64 = 1_000_000_000;
    match proto {
        crate::PROTO_TCP if flags & (NAT_FLAG_CLOSING | NAT_FLAG_RST) != 0 || !answered => 120 * SEC,
        crate::PROTO_TCP => 5 * 24 * 3600 * SEC,
        crate::PROTO_UDP if answered => 120 * SEC,
        crate::PROTO_UDP | crate::PROTO_ICMP => 30 * SEC,
        _ => 600 * SEC,
    }
}

/// Whether a translation is past its time: `entry` and its partner together. An entry
/// without its partner (a half an older agent's sweep left, one LRU eviction took) serves
/// no flow both ways: it lives as an unanswered one would (a lone reply half that once
/// saw replies lived 5 days, and held its NI's share).
pub fn pair_expired(proto: u8, entry: &NatValue, partner: Option<&NatValue>, now_ns: u64) -> bool {
    let reply_used = |v: &NatValue| v.flags & NAT_FLAG_ORIG == 0 && v.flags & NAT_FLAG_USED != 0;
    let (last, flags, answered) = match partner {
        Some(p) => (entry.last_seen_ns.max(p.last_seen_ns), entry.flags | p.flags, reply_used(entry) || reply_used(p)),
        None => (entry.last_seen_ns, entry.flags, false),
    };
    let answered = answered && !partner.is_some_and(|p| syn_unanswered(entry, p) || syn_unanswered(p, entry));
    now_ns.saturating_sub(last) > pair_idle_timeout_ns(proto, flags, answered)
}

/// Whether `half`'s latest packet was a SYN without ACK (`NAT_FLAG_SYN_SENT`) that
/// `other`, the half its answers use, has seen nothing after: an answer (a SYN-ACK, the
/// challenge ACK to a late duplicate SYN) in a later clock tick says the far end is
/// there, even before the SYN's sender sends its next packet.
#[inline(always)]
pub fn syn_unanswered(half: &NatValue, other: &NatValue) -> bool {
    half.flags & NAT_FLAG_SYN_SENT != 0 && half.last_seen_ns > other.last_seen_ns
}

/// A flow translated twice, in its NI (at the NI veth, to its address there) and again
/// at its uplink: its four entries, the order a round trip meets them. The fast path
/// carries replies past the inner reply half, the NI's (`NatValue::inner_port`), so only
/// the outer ones (the NI's original half, the uplink's reply half) see every packet of
/// their direction; the sweep judges the four as one (`chain_expired`), and both pairs
/// go together.
#[derive(Clone, Copy, Debug)]
pub struct Chain {
    pub ni_out: NatValue,
    pub uplink_out: NatValue,
    pub uplink_reply: NatValue,
    pub ni_reply: NatValue,
}

/// A source translation's original half.
#[inline(always)]
fn is_original_source(v: &NatValue) -> bool {
    v.rewrite == REWRITE_SRC && v.flags & NAT_FLAG_ORIG != 0
}

/// A source translation's reply half.
#[inline(always)]
fn is_reply_source(v: &NatValue) -> bool {
    v.rewrite == REWRITE_DST && v.flags & NAT_FLAG_ORIG == 0
}

/// The key that links the two pairs of a chain: the NI's reply half's key turned round
/// (the tuple the flow leaves the NI by, from its veth's address) is the uplink's
/// original half's key in the agent's domain, and back (`domain`: the other side's).
#[inline(always)]
pub fn across(key: &NatKey, domain: u32) -> NatKey {
    NatKey { domain, ..key.reversed() }
}

/// The keys an entry leads to: its partner, and the other pair's entry it links to
/// (`across`: an NI's reply half, the agent's domain's original half of a flow from an
/// NI veth address).
pub fn links(key: &NatKey, v: &NatValue) -> [Option<NatKey>; 2] {
    let other = if key.domain != DOMAIN_AGENT && is_reply_source(v) {
        Some(across(key, DOMAIN_AGENT))
    } else if key.domain == DOMAIN_AGENT && is_original_source(v) {
        crate::fast::ni_end_zone(key.src).map(|zone| across(key, zone))
    } else {
        None
    };
    [Some(partner(key, v)), other]
}

/// The chain (`Chain`) entry `v` under `key` is part of, its other entries by `get`;
/// None: the entry is not a source translation's, or the flow's other pair (or an entry
/// of either) is not there.
pub fn chain_of(key: &NatKey, v: &NatValue, get: impl Fn(&NatKey) -> Option<NatValue>) -> Option<Chain> {
    let get = |k: &NatKey| if k == key { Some(*v) } else { get(k) };
    // The NI's reply half, where the pairs link.
    let ni_reply_key = if key.domain != DOMAIN_AGENT {
        if is_reply_source(v) {
            *key
        } else if is_original_source(v) {
            partner(key, v)
        } else {
            return None;
        }
    } else {
        let uplink_out_key = if is_original_source(v) {
            *key
        } else if is_reply_source(v) {
            partner(key, v)
        } else {
            return None;
        };
        across(&uplink_out_key, crate::fast::ni_end_zone(uplink_out_key.src)?)
    };
    let ni_reply = get(&ni_reply_key)?;
    let ni_out_key = partner(&ni_reply_key, &ni_reply);
    let uplink_out_key = across(&ni_reply_key, DOMAIN_AGENT);
    let (ni_out, uplink_out) = (get(&ni_out_key)?, get(&uplink_out_key)?);
    let uplink_reply_key = partner(&uplink_out_key, &uplink_out);
    let uplink_reply = get(&uplink_reply_key)?;
    // The entry judged must be one of the four: a key of another flow's (an entry the
    // LRU took, made again by another flow) leads to that flow's chain.
    let whole = [ni_out_key, uplink_out_key, uplink_reply_key, ni_reply_key].contains(key)
        && is_original_source(&ni_out)
        && is_reply_source(&ni_reply)
        && is_original_source(&uplink_out)
        && is_reply_source(&uplink_reply)
        && crate::fast::ni_end_zone(uplink_out_key.src) == Some(ni_reply_key.domain)
        && partner(&ni_out_key, &ni_out) == ni_reply_key
        && partner(&uplink_reply_key, &uplink_reply) == uplink_out_key;
    whole.then_some(Chain { ni_out, uplink_out, uplink_reply, ni_reply })
}

/// Whether a chain is past its time, judged as one translation: idle since the latest
/// packet any of its entries saw, answered when either reply half was used, and its TCP
/// state (closing, reset) the outer entries' (each sees every packet of its direction;
/// an inner one keeps an older flow's FIN on a reused tuple, which would hold the open
/// flow to the closing 2 minutes).
pub fn chain_expired(proto: u8, c: &Chain, now_ns: u64) -> bool {
    let last = c.ni_out.last_seen_ns.max(c.uplink_out.last_seen_ns).max(c.uplink_reply.last_seen_ns).max(c.ni_reply.last_seen_ns);
    // (A connection opening again on the tuple: the NI's original half sees every packet
    // out, the uplink's reply half every one back.)
    let answered = (c.uplink_reply.flags | c.ni_reply.flags) & NAT_FLAG_USED != 0 && !syn_unanswered(&c.ni_out, &c.uplink_reply);
    now_ns.saturating_sub(last) > pair_idle_timeout_ns(proto, c.ni_out.flags | c.uplink_reply.flags, answered)
}

/// Whether the translation entry `v` (under `key`) is part of is past its time: its
/// chain (`chain_of`, `chain_expired`) when the flow was translated twice, else its pair
/// (`pair_expired`); the other entries by `get`.
pub fn translation_expired(key: &NatKey, v: &NatValue, get: impl Fn(&NatKey) -> Option<NatValue>, now_ns: u64) -> bool {
    match chain_of(key, v, &get) {
        Some(c) => chain_expired(key.proto, &c, now_ns),
        None => {
            // The entry under the partner's key, when it is this one's partner: not a
            // newer translation's that the tuple was given since (another port: its own
            // partner is another key).
            let pk = partner(key, v);
            pair_expired(key.proto, v, get(&pk).filter(|pv| partner(&pk, pv) == *key).as_ref(), now_ns)
        }
    }
}

/// The NI a translation counts against (see `ZoneUse`): its domain, or in the agent's
/// netns the NI whose veth address it involves (`addrs`: the tuple's and the
/// translation's addresses).
#[inline(always)]
pub fn owner_zone(domain: u32, addrs: [Ipv4; 3]) -> u32 {
    if domain != DOMAIN_AGENT {
        return domain;
    }
    let mut i = 0;
    while i < 3 {
        let z = crate::veth_zone(addrs[i]);
        if z != 0 {
            return z;
        }
        i += 1;
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTO_TCP;

    #[test]
    fn only_packets_from_outside_that_name_a_veth_address_claim_to_be_inside() {
        const UPLINK: u32 = 7;
        let agent_end = crate::chosen_ifindex(DOMAIN_AGENT, crate::SLOT_AGENT_END);
        let flow = |src, dst| Flow { proto: PROTO_TCP, src, dst, outer_src: src, outer_dst: dst, ..Flow::default() };
        let (app, remote) = ([10, 10, 1, 2], [10, 99, 0, 10]);
        assert!(outside_claims_inside(DOMAIN_AGENT, UPLINK, &flow([169, 254, 100, 1], app)), "as the agent's end, to an app");
        assert!(outside_claims_inside(DOMAIN_AGENT, UPLINK, &flow(remote, [169, 254, 100, 2])), "to an NI's end");
        assert!(!outside_claims_inside(DOMAIN_AGENT, UPLINK, &flow(remote, [192, 168, 0, 2])), "to the uplink's address");
        assert!(!outside_claims_inside(DOMAIN_AGENT, agent_end, &flow([169, 254, 100, 2], remote)), "an NI's traffic, at its veth");
        // An interface the kernel numbered that carries an NI's NAT (the tests' loopback).
        assert!(!outside_claims_inside(3, UPLINK, &flow(remote, [169, 254, 100, 2])), "an NI's own interface");
    }

    #[test]
    fn snat_entries_pair_up() {
        let f = Flow { proto: PROTO_TCP, src: [10, 10, 1, 2], dst: [8, 8, 8, 8], sport: 40000, dport: 80, ..Flow::default() };
        let fwd_key = NatKey::of(3, &f);
        let fwd = NatValue { addr: [169, 254, 100, 10], port: 1025, rewrite: REWRITE_SRC, ..NatValue::default() };
        let on_wire = fwd_key.rewritten(&fwd);
        assert_eq!((on_wire.src, on_wire.sport, on_wire.dst, on_wire.dport), ([169, 254, 100, 10], 1025, [8, 8, 8, 8], 80));
        // The reply arrives with the translated tuple reversed and must go back to the app.
        let reply = on_wire.reversed();
        assert_eq!((reply.src, reply.sport, reply.dst, reply.dport), ([8, 8, 8, 8], 80, [169, 254, 100, 10], 1025));
        let rev = NatValue { addr: f.src, port: f.sport, rewrite: REWRITE_DST, ..NatValue::default() };
        let back = reply.rewritten(&rev);
        assert_eq!(back, NatKey::of(3, &f).reversed());
    }

    /// A flow translated in NI 3 (veth address 169.254.100.10) and at its uplink: every
    /// entry leads to the same chain, which lives by its outer entries' state: answered at
    /// the uplink, its NI reply half (which the fast path passes) left with an older
    /// flow's FIN on the reused tuple, it is an open flow's, where the NI's pair judged
    /// alone would be a closing one's.
    #[test]
    fn a_flow_translated_twice_is_judged_as_one_chain() {
        const SEC: u64 = 1_000_000_000;
        let f = Flow { proto: PROTO_TCP, src: [10, 10, 1, 2], dst: [8, 8, 8, 8], sport: 40000, dport: 80, ..Flow::default() };
        let ni_out_key = NatKey::of(3, &f);
        let ni_out = NatValue::new(10 * SEC, 0, [169, 254, 100, 10], 1025, REWRITE_SRC, NAT_FLAG_ORIG | NAT_FLAG_USED);
        let ni_reply_key = partner(&ni_out_key, &ni_out);
        let ni_reply = NatValue::new(0, 0, f.src, f.sport, REWRITE_DST, NAT_FLAG_USED | NAT_FLAG_CLOSING);
        let uplink_out_key = across(&ni_reply_key, DOMAIN_AGENT);
        assert_eq!(links(&ni_reply_key, &ni_reply), [Some(ni_out_key), Some(uplink_out_key)]);
        let uplink_out = NatValue::new(10 * SEC, 0, [192, 168, 0, 2], 2000, REWRITE_SRC, NAT_FLAG_ORIG | NAT_FLAG_USED);
        assert_eq!(links(&uplink_out_key, &uplink_out)[1], Some(ni_reply_key));
        let uplink_reply_key = partner(&uplink_out_key, &uplink_out);
        let mut uplink_reply = NatValue::new(10 * SEC, 0, [169, 254, 100, 10], 1025, REWRITE_DST, NAT_FLAG_USED);
        (uplink_reply.inner_port, uplink_reply.inner_host) = inner_of(&ni_reply).unwrap();
        uplink_reply.flags |= NAT_FLAG_INNER;
        assert_eq!((uplink_reply.inner_port, uplink_reply.inner_host), (40000, [1, 2]));
        let entries = [(ni_out_key, ni_out), (uplink_out_key, uplink_out), (uplink_reply_key, uplink_reply), (ni_reply_key, ni_reply)];
        let get = |k: &NatKey| entries.iter().find(|(e, _)| e == k).map(|(_, v)| *v);
        for (k, v) in &entries {
            let c = chain_of(k, v, get).expect("every entry finds the chain");
            assert_eq!([c.ni_out, c.uplink_out, c.uplink_reply, c.ni_reply], entries.map(|(_, v)| v));
            assert!(!translation_expired(k, v, get, 190 * SEC), "an open flow's, idle 3 minutes");
            assert!(translation_expired(k, v, get, 6 * 24 * 3600 * SEC), "idle 6 days");
        }
        assert!(pair_expired(PROTO_TCP, &ni_out, Some(&ni_reply), 190 * SEC), "the NI's pair alone: a closing flow's");
        // The uplink's FIN closes the chain.
        let closed = |k: &NatKey| {
            if *k == uplink_reply_key {
                Some(NatValue { flags: NAT_FLAG_USED | NAT_FLAG_CLOSING, ..uplink_reply })
            } else {
                get(k)
            }
        };
        assert!(translation_expired(&ni_out_key, &ni_out, closed, 190 * SEC));
        // The app's SYN again on the tuple, unanswered: the chain lives as unanswered.
        let reopening = |k: &NatKey| {
            if *k == ni_out_key {
                Some(NatValue { flags: flags_after(ni_out.flags, PROTO_TCP, crate::packet::TCP_SYN), last_seen_ns: 20 * SEC, ..ni_out })
            } else {
                get(k)
            }
        };
        assert!(translation_expired(&uplink_reply_key, &uplink_reply, reopening, 190 * SEC));
        // Answered at the uplink after that SYN: the chain lives on.
        let answered_again = |k: &NatKey| {
            if *k == uplink_reply_key {
                Some(NatValue { last_seen_ns: 21 * SEC, ..uplink_reply })
            } else {
                reopening(k)
            }
        };
        assert!(!translation_expired(&ni_out_key, &ni_out, answered_again, 190 * SEC));
        // An entry of either pair missing: each pair is judged as a pair.
        let halved = |k: &NatKey| if *k == uplink_reply_key { None } else { get(k) };
        assert!(chain_of(&ni_out_key, &ni_out, halved).is_none());
        assert!(translation_expired(&ni_out_key, &ni_out, halved, 190 * SEC));
        // An entry whose partner's key another flow's entry holds now (the LRU took its
        // own, and another flow made it again) is no part of that flow's chain.
        let stranger = NatKey { sport: 40001, ..ni_out_key };
        assert!(chain_of(&stranger, &NatValue { port: 1025, ..ni_out }, get).is_none());
        // A port map's pair is no chain.
        let pm = NatValue::new(0, 5, [10, 10, 1, 2], 80, REWRITE_DST, NAT_FLAG_ORIG);
        assert!(chain_of(&NatKey { domain: 3, ..ni_reply_key }, &pm, get).is_none());
    }

    #[test]
    fn a_reused_tuple_checks_its_reply_half() {
        use crate::packet::{TCP_ACK, TCP_SYN};
        assert!(may_reuse_tuple(PROTO_TCP, TCP_SYN));
        assert!(!may_reuse_tuple(PROTO_TCP, TCP_SYN | TCP_ACK));
        assert!(!may_reuse_tuple(PROTO_TCP, TCP_ACK));
        assert!(may_reuse_tuple(crate::PROTO_UDP, 0));
        // Only a pair that could be past its time is checked: not a flow in use.
        const SEC: u64 = 1_000_000_000;
        // (From a second early: the programs' clock may lag the sweep's.)
        assert!(!may_have_lost_reply_half(crate::PROTO_UDP, 0, 28 * SEC));
        assert!(may_have_lost_reply_half(crate::PROTO_UDP, 0, 29 * SEC));
        assert!(!may_have_lost_reply_half(PROTO_TCP, TCP_SYN, 118 * SEC));
        assert!(may_have_lost_reply_half(PROTO_TCP, TCP_SYN, 119 * SEC));
        assert!(!may_have_lost_reply_half(PROTO_TCP, TCP_ACK, 3600 * SEC));
        let f = Flow { src: [10, 10, 1, 2], sport: 40000, ..Flow::default() };
        let half = NatValue { addr: f.src, port: f.sport, rewrite: REWRITE_DST, ..NatValue::default() };
        assert!(is_reply_half(&half, &f));
        assert!(!is_reply_half(&NatValue { port: 40001, ..half }, &f), "another flow's");
        assert!(!is_reply_half(&NatValue { flags: NAT_FLAG_ORIG, ..half }, &f), "a port map's original half");
        assert!(!is_reply_half(&NatValue { rewrite: REWRITE_SRC, ..half }, &f));
    }

    #[test]
    fn no_pair_times_out_before_its_protocols_shortest_timeout() {
        use crate::{PROTO_ICMP, PROTO_UDP};
        for proto in [PROTO_TCP, PROTO_UDP, PROTO_ICMP, 47] {
            for flags in 0..=u8::MAX {
                for answered in [false, true] {
                    assert!(pair_idle_timeout_ns(proto, flags, answered) >= shortest_pair_timeout_ns(proto), "{proto} {flags} {answered}");
                }
            }
            let shortest = (0..=u8::MAX).flat_map(|f| [false, true].map(|a| pair_idle_timeout_ns(proto, f, a))).min();
            assert_eq!(shortest, Some(shortest_pair_timeout_ns(proto)), "the shortest, not below it: {proto}");
        }
    }

    #[test]
    fn a_translation_lives_as_long_as_its_flow() {
        const SEC: u64 = 1_000_000_000;
        let fwd = NatValue { flags: NAT_FLAG_ORIG, ..NatValue::default() };
        let rev = NatValue::default();
        // Unanswered TCP (a SYN flood): 2 minutes, like SYN_SENT, not days.
        assert!(pair_expired(PROTO_TCP, &fwd, Some(&rev), 121 * SEC));
        // Answered: the reply entry was used; the pair lives while either side talks.
        let rev = NatValue { flags: flags_after(0, PROTO_TCP, crate::packet::TCP_ACK), last_seen_ns: 50 * SEC, ..rev };
        assert!(!pair_expired(PROTO_TCP, &fwd, Some(&rev), 3 * 24 * 3600 * SEC));
        assert!(!pair_expired(PROTO_TCP, &rev, Some(&fwd), 3 * 24 * 3600 * SEC), "both entries agree");
        assert!(pair_expired(PROTO_TCP, &rev, None, 171 * SEC), "a reply half without its partner: as unanswered");
        // A FIN: 2 minutes; a SYN reusing the tuple reopens it.
        let closing = flags_after(rev.flags, PROTO_TCP, crate::packet::TCP_FIN);
        assert!(!pair_expired(PROTO_TCP, &NatValue { flags: closing, ..rev }, Some(&fwd), 169 * SEC), "half closed");
        assert!(pair_expired(PROTO_TCP, &NatValue { flags: closing, ..rev }, Some(&fwd), 171 * SEC));
        assert_eq!(flags_after(closing, PROTO_TCP, crate::packet::TCP_SYN) & NAT_FLAG_CLOSING, 0);
        let syn_ack = crate::packet::TCP_SYN | crate::packet::TCP_ACK;
        assert_eq!(flags_after(closing, PROTO_TCP, syn_ack) & NAT_FLAG_CLOSING, 0, "the reply half reopens on the SYN-ACK");
        // A client's SYN again on the answered tuple (its old connection gone): unanswered
        // until its sender acknowledges an answer, not the old connection's 5 days.
        let reopening = NatValue { flags: flags_after(fwd.flags, PROTO_TCP, crate::packet::TCP_SYN), last_seen_ns: 60 * SEC, ..fwd };
        assert!(pair_expired(PROTO_TCP, &reopening, Some(&rev), 181 * SEC), "a SYN again, unanswered");
        let acked = NatValue { flags: flags_after(reopening.flags, PROTO_TCP, crate::packet::TCP_ACK), ..reopening };
        assert!(!pair_expired(PROTO_TCP, &acked, Some(&rev), 3 * 24 * 3600 * SEC), "answered again");
        // A late duplicate SYN after the answer: the reply half's packet after it (the
        // challenge ACK) says the far end is there.
        let challenged = NatValue { last_seen_ns: 61 * SEC, ..rev };
        assert!(!pair_expired(PROTO_TCP, &reopening, Some(&challenged), 3 * 24 * 3600 * SEC), "answered after the SYN");
        assert!(!pair_expired(PROTO_TCP, &challenged, Some(&reopening), 3 * 24 * 3600 * SEC), "both entries agree");
        // A FIN each way: still 2 minutes (the far end's TIME_WAIT), not the conntrack's 10 s.
        let fwd_closed = NatValue { flags: flags_after(fwd.flags, PROTO_TCP, crate::packet::TCP_FIN), ..fwd };
        let rev_closed = NatValue { flags: closing, ..rev };
        assert!(!pair_expired(PROTO_TCP, &rev_closed, Some(&fwd_closed), 169 * SEC));
        assert!(pair_expired(PROTO_TCP, &fwd_closed, Some(&rev_closed), 171 * SEC), "both entries agree");
        // An RST counts until the next packet.
        let rst = flags_after(rev.flags, PROTO_TCP, crate::packet::TCP_RST);
        assert!(pair_expired(PROTO_TCP, &NatValue { flags: rst, ..rev }, Some(&fwd), 171 * SEC));
        assert_eq!(flags_after(rst, PROTO_TCP, crate::packet::TCP_ACK) & NAT_FLAG_RST, 0);
        // UDP: 30 s one way, 120 s answered (the conntrack's).
        let udp_fwd = NatValue { flags: NAT_FLAG_ORIG | NAT_FLAG_USED, last_seen_ns: 100 * SEC, ..NatValue::default() };
        assert!(pair_expired(crate::PROTO_UDP, &udp_fwd, Some(&NatValue::default()), 131 * SEC));
        let udp_rev = NatValue { flags: NAT_FLAG_USED, ..NatValue::default() };
        assert!(!pair_expired(crate::PROTO_UDP, &udp_fwd, Some(&udp_rev), 219 * SEC));
        assert!(pair_expired(crate::PROTO_UDP, &udp_fwd, Some(&udp_rev), 221 * SEC));
    }

    #[test]
    fn partners_find_each_other() {
        let f = Flow { proto: PROTO_TCP, src: [10, 10, 1, 2], dst: [8, 8, 8, 8], sport: 40000, dport: 80, ..Flow::default() };
        let k = NatKey::of(3, &f);
        let fwd = NatValue { addr: [169, 254, 100, 10], port: 1025, rewrite: REWRITE_SRC, flags: NAT_FLAG_ORIG, ..NatValue::default() };
        let rk = partner(&k, &fwd);
        let rev = NatValue { addr: f.src, port: f.sport, rewrite: REWRITE_DST, ..NatValue::default() };
        assert_eq!(partner(&rk, &rev), k);
        assert_eq!(rk, NatKey { src: f.dst, dst: fwd.addr, sport: f.dport, dport: fwd.port, ..k });
        // An ICMP echo: the identifier is both "ports", on either side of the rewrite.
        let echo = NatKey { proto: crate::PROTO_ICMP, sport: 7, dport: 7, ..k };
        let echo_rk = partner(&echo, &fwd);
        assert_eq!(echo_rk, NatKey { src: f.dst, dst: fwd.addr, sport: fwd.port, dport: fwd.port, ..echo });
        let echo_rev = NatValue { port: 7, ..rev };
        assert_eq!(partner(&echo_rk, &echo_rev), echo);
        // `across`: the same tuple turned round, in another domain, and back.
        let out = across(&rk, DOMAIN_AGENT);
        assert_eq!(out, NatKey { domain: DOMAIN_AGENT, src: fwd.addr, dst: f.dst, sport: fwd.port, dport: f.dport, ..k });
        assert_eq!(across(&out, 3), rk);
    }

    /// A half judged alone: the entry under its partner's key is another translation's,
    /// made since for the same tuple with another port (its partner is another key), and
    /// lends it no life.
    #[test]
    fn a_newer_translation_under_the_partners_key_is_no_partner() {
        const SEC: u64 = 1_000_000_000;
        let f = Flow { proto: PROTO_TCP, src: [10, 10, 1, 2], dst: [8, 8, 8, 8], sport: 40000, dport: 80, ..Flow::default() };
        let out_key = NatKey::of(3, &f);
        let out = NatValue { addr: [169, 254, 100, 10], port: 1025, rewrite: REWRITE_SRC, flags: NAT_FLAG_ORIG, ..NatValue::default() };
        // The old translation's reply half, idle 3 minutes, unanswered: past its 120 s.
        let reply_key = partner(&out_key, &out);
        let reply = NatValue { addr: f.src, port: f.sport, rewrite: REWRITE_DST, last_seen_ns: 10 * SEC, ..NatValue::default() };
        let now = 190 * SEC;
        let theirs = NatValue { last_seen_ns: now, ..out };
        assert!(!translation_expired(&reply_key, &reply, |k| (*k == out_key).then_some(theirs), now), "its own partner, fresh");
        let newer = NatValue { port: 1026, ..theirs };
        assert!(translation_expired(&reply_key, &reply, |k| (*k == out_key).then_some(newer), now), "another translation's entry");
    }

    #[test]
    fn translations_count_against_their_ni() {
        assert_eq!(owner_zone(5, [[0; 4]; 3]), 5);
        // Uplink SNAT of NI 3's veth address (169.254.100.10), agent side of NI 2 (.5).
        assert_eq!(owner_zone(DOMAIN_AGENT, [[8, 8, 8, 8], [192, 168, 0, 2], [169, 254, 100, 10]]), 3);
        assert_eq!(owner_zone(DOMAIN_AGENT, [[169, 254, 100, 5], [8, 8, 8, 8], [1, 1, 1, 1]]), 2);
        assert_eq!(owner_zone(DOMAIN_AGENT, [[8, 8, 8, 8], [1, 1, 1, 1], [9, 9, 9, 9]]), 0);
    }

    #[test]
    fn port_candidates_stay_in_range_and_cover_it() {
        let mut seen = [false; 100];
        for attempt in 0..100 {
            let p = candidate_port(0xdead_beef, attempt, 40000, 40099);
            assert!((40000..=40099).contains(&p));
            seen[(p - 40000) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(candidate_port(5, 0, 7, 7), 7);
        // The random start wraps instead of overflowing.
        assert_eq!(candidate_port(u32::MAX, 3, 1024, 65535), 1026);
    }
}
