//! The redirect fast path: which packets may skip the NI bridge and the routing of the
//! NI's and the agent's netns (the programs redirect them, after a FIB lookup that
//! says where the kernel would route them), and the one header change that stands in
//! for each routing hop they skip (the TTL). Everything else a packet meets on the
//! kernel's path still runs: the app port's programs judge and count it, the NAT
//! programs translate it on the same interfaces as before, but for the NI veth's egress,
//! whose translation the app port's program applies itself as it hands the packet past.
//!
//! Out (app -> world): app port ingress -> agent-side veth ingress (`bpf_redirect_peer`,
//! translated; or the NI veth's egress, `bpf_redirect`, when the translation is not there
//! yet); agent-side veth ingress -> uplink egress (`bpf_redirect_neigh` to the FIB's next hop:
//! the NI's uplink table, by the `iif` rule). Back: uplink ingress -> NI veth ingress
//! (`bpf_redirect_peer`); NI veth ingress -> app port egress (`bpf_redirect`).

use crate::{
    acl::prefix_contains,
    ct::FLAG_SEEN_REPLY,
    nat::{NatValue, NAT_FLAG_ORIG, REWRITE_DST, REWRITE_SRC},
    packet::{Flow, FRAG_NONE},
    VETH_NET, VETH_NET_LEN,
};

/// FASTZONE_V1's value, indexed by zone: where an NI's fast path leads. An NI whose
/// `enabled` is 0 takes the kernel's path only: switch NIs (no routing to skip), VPN
/// NIs (xfrm must see what its policy selects, on the kernel's path), NIs without an
/// uplink, and every NI when `[agent] fast_path = false`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastZone {
    pub enabled: u32,
    /// The NI's bridge: the interface the NI's routing sees the apps' packets arrive on.
    pub bridge_ifindex: u32,
    /// The NI's end of its veth to the agent, and the agent's end.
    pub ni_veth_ifindex: u32,
    pub agent_veth_ifindex: u32,
}

/// A packet an app sends on a known, allowed flow may skip the bridge and the NI's
/// routing when the flow has been answered (so never its first packets: those take the
/// kernel's path, which resolves neighbours and makes the translations), it is neither
/// an ICMP error nor a fragment (the kernel relates and reassembles those), and it goes
/// nowhere on the device itself (the agent's addresses, hairpin port maps on the
/// uplinks' addresses: `to_device`).
#[inline(always)]
pub fn app_packet_may_skip(ct_flags: u8, flow: &Flow, to_device: bool) -> bool {
    ct_flags & FLAG_SEEN_REPLY != 0
        && !flow.related
        && flow.frag == FRAG_NONE
        && !to_device
        && !prefix_contains(VETH_NET, VETH_NET_LEN, flow.dst)
}

/// At the agent-side veth's ingress: the packet's translation for the uplink is known
/// (the original direction of a source translation made in the agent's domain), so the
/// uplink it left by before is where it leaves again.
#[inline(always)]
pub fn leaves_translated(v: &NatValue, flow: &Flow) -> bool {
    v.rewrite == REWRITE_SRC && v.flags & NAT_FLAG_ORIG != 0 && !flow.related && flow.frag == FRAG_NONE
}

/// At an ingress that just translated the packet back: a reply to a source translation
/// (never a port map's flow: those are EVE's or the outside's, and take the kernel's
/// path to the agent-side veth's own translation).
#[inline(always)]
pub fn returns_translated(v: &NatValue, flow: &Flow) -> bool {
    v.rewrite == REWRITE_DST && v.flags & NAT_FLAG_ORIG == 0 && !flow.related && flow.frag == FRAG_NONE
}

/// IPv4's TTL and protocol bytes (offsets 8 and 9) after one routing hop; None when the
/// TTL would run out there (the kernel's path sends the ICMP error).
#[inline(always)]
pub fn after_hop(ttl_proto: [u8; 2]) -> Option<[u8; 2]> {
    match ttl_proto[0] {
        0 | 1 => None,
        ttl => Some([ttl - 1, ttl_proto[1]]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{packet::FRAG_FIRST, PROTO_TCP};

    fn flow() -> Flow {
        Flow { proto: PROTO_TCP, src: [10, 1, 0, 2], dst: [10, 99, 0, 10], sport: 40000, dport: 80, ..Flow::default() }
    }

    #[test]
    fn only_answered_plain_packets_to_the_world_skip() {
        assert!(app_packet_may_skip(FLAG_SEEN_REPLY, &flow(), false));
        assert!(!app_packet_may_skip(0, &flow(), false), "a flow not yet answered takes the kernel's path");
        assert!(!app_packet_may_skip(FLAG_SEEN_REPLY, &flow(), true), "to the device");
        let veth = Flow { dst: [169, 254, 100, 1], ..flow() };
        assert!(!app_packet_may_skip(FLAG_SEEN_REPLY, &veth, false), "to an agent-side veth address");
        assert!(!app_packet_may_skip(FLAG_SEEN_REPLY, &Flow { related: true, ..flow() }, false), "ICMP error");
        assert!(!app_packet_may_skip(FLAG_SEEN_REPLY, &Flow { frag: FRAG_FIRST, ..flow() }, false), "fragment");
    }

    #[test]
    fn translations_tell_the_way_out_from_the_way_back() {
        let out = NatValue { rewrite: REWRITE_SRC, flags: NAT_FLAG_ORIG, ..NatValue::default() };
        let back = NatValue { rewrite: REWRITE_DST, flags: 0, ..NatValue::default() };
        let portmap_in = NatValue { rewrite: REWRITE_DST, flags: NAT_FLAG_ORIG, ..NatValue::default() };
        let portmap_reply = NatValue { rewrite: REWRITE_SRC, flags: 0, ..NatValue::default() };
        assert!(leaves_translated(&out, &flow()) && !leaves_translated(&portmap_reply, &flow()));
        assert!(!leaves_translated(&back, &flow()));
        assert!(returns_translated(&back, &flow()) && !returns_translated(&portmap_in, &flow()));
        assert!(!returns_translated(&out, &flow()));
        assert!(!returns_translated(&back, &Flow { related: true, ..flow() }));
    }

    #[test]
    fn a_hop_takes_one_from_the_ttl_and_never_the_last() {
        assert_eq!(after_hop([64, PROTO_TCP]), Some([63, PROTO_TCP]));
        assert_eq!(after_hop([2, 17]), Some([1, 17]));
        assert_eq!(after_hop([1, PROTO_TCP]), None);
        assert_eq!(after_hop([0, PROTO_TCP]), None);
    }
}
