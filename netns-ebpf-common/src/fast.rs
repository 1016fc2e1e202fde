//! The redirect fast path: which packets may skip the NI bridge and the routing of the
//! NI's and the agent's netns (the programs redirect them where the kernel would route
//! them: by the agent's own routes, `routed_to_agent`, or out of the agent's netns by a
//! FIB lookup), and the one header change that stands in for each routing hop they skip
//! (the TTL). Everything else a packet meets on the kernel's path still runs: the app
//! port's programs judge and count it, the NAT programs translate it on the same
//! interfaces as before; but for three programs whose work is done where the packet
//! leaves: the NI veth's egress, whose translation the app port's program applies (or
//! makes, for a new flow), the uplink's egress, whose translation the agent-side veth's
//! program applies, and the app port's egress, whose accounting of a reply the NI veth's
//! program does (`reply_may_skip_port` says when that is all it would do).
//!
//! Out (app -> world): app port ingress -> agent-side veth ingress (`bpf_redirect_peer`,
//! translated; or the NI veth's egress, `bpf_redirect`, when the app port does not
//! translate it); agent-side veth ingress -> uplink egress (`bpf_redirect_neigh` to the FIB's next hop:
//! the NI's uplink table, by the `iif` rule; translated, or, a new flow's, translated by
//! the uplink's egress program). A flow's first packet takes it too. Back: uplink ingress -> NI veth ingress
//! (`bpf_redirect_peer`; translated back through both the uplink's translation and the
//! NI's when the uplink's carries the NI's, `inner_destination`, marked `NI_NAT_DONE_MARK`
//! for the NI veth's program, which then skips its lookup); NI veth ingress -> the app's own end of its veth
//! (`bpf_redirect_peer`, counted; or the app port's egress, `bpf_redirect`).

use crate::{
    acl::{is_metadata_answer, prefix_contains},
    ct::{self, CtValue, DIR_REPLY},
    nat::{NatValue, NAT_FLAG_INNER, NAT_FLAG_ORIG, REWRITE_DST, REWRITE_SRC},
    packet::{Flow, FRAG_NONE},
    IfaceInfo, IFACE_FLAG_APP_NETNS, IFACE_FLAG_IP_LEARN, PROTO_TCP, VETH_NET, VETH_NET_LEN,
};

/// FASTZONE_V4's value, indexed by zone: where an NI's fast path leads. An NI whose
/// `enabled` is 0 takes the kernel's path only: switch NIs (no routing to skip), VPN
/// NIs (xfrm must see what its policy selects, on the kernel's path), NIs without an
/// uplink, and every NI when `[agent] fast_path = false`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastZone {
    pub enabled: u32,
    /// The NI's end of its veth to the agent, and the agent's end.
    pub ni_veth_ifindex: u32,
    pub agent_veth_ifindex: u32,
    /// The NI's uplink table: the hop out asks the FIB straight in it (as the NI's `iif`
    /// rule would pick it, without walking the rules: `BPF_FIB_LOOKUP_TBID`, Linux
    /// 6.5+). 0: the lookup goes by the rules (kernels without that flag).
    pub uplink_table: u32,
    /// The Ethernet addresses the agent's routing gives a packet into the NI: the NI
    /// end's MAC (destination), then the agent end's (source), as they stand in the
    /// header.
    pub into_ni_macs: [u8; 12],
    /// The same two the other way round: what the NI's routing gives a packet out to
    /// the agent (its default route's gateway is the agent's end).
    pub into_agent_macs: [u8; 12],
    /// The NI bridge's MAC (the agent sets it): the source the NI's routing gives a
    /// packet to an app, and the destination of an app's frames that the NI routes.
    pub bridge_mac: [u8; 6],
    /// The NI's subnet (prefix length, then address): where its apps' packets come
    /// from, and the one destination of theirs that its routing does not send to the
    /// agent (`routed_to_agent`).
    pub subnet_len: u8,
    pub _pad: u8,
    pub subnet: crate::Ipv4,
}

/// The zone of the NI whose veth end in the NI has address `addr` (169.254.100.(4N-2)),
/// or None: any other address, the agent's ends (.(4N-3)) among them, which are the
/// agent netns' own.
#[inline(always)]
pub fn ni_end_zone(addr: crate::Ipv4) -> Option<u32> {
    if !prefix_contains(VETH_NET, VETH_NET_LEN, addr) || addr[3] % 4 != 2 {
        return None;
    }
    Some(crate::veth_zone(addr))
}

/// FASTPROG_V1's slot of the from-app port's fast path (`prog_names::APP_PORT_FROM_APP_FAST`):
/// the from-app program continues there by tail call once a packet has passed the port.
pub const TAIL_FROM_APP: u32 = 0;
/// FASTPROG_V1's size.
pub const TAIL_PROGRAMS: u32 = 1;

/// `skb->mark` of a packet the fast path translated at the agent-side veth's ingress as
/// its uplink's egress program would have (`fast::to_uplink`) and sent to that egress:
/// the program there only clears it. Only the agent's netns can mark a packet at that
/// egress (a veth clears marks between namespaces, the fast path into the agent's netns
/// clears them too), and no translation in the agent's domain is keyed by a packet so
/// translated (its reply half is keyed the other way round): one that lost its mark
/// would pass that egress untouched all the same. (Cilium's programs tell each other
/// "SNAT done" by a mark alike.)
pub const SNAT_DONE_MARK: u32 = 0x5a7d_0e00;

/// `skb->mark` of a reply the fast path translated at its uplink's ingress back to the
/// app's address, through the NI's translation too (`inner_destination`), and handed into
/// the NI: the NI veth's ingress program, which would have looked that translation up,
/// only clears the mark and sends it on to the app. As `SNAT_DONE_MARK`, only the agent's
/// netns can mark a packet there (a veth clears marks between namespaces); one that lost
/// its mark would be looked up there and, its tuple no translation's, go on as it is.
/// Read as EVE's connection mark it is a drop's (`mark::DROP_BIT`), which no program
/// takes as leave to let a flow in.
pub const NI_NAT_DONE_MARK: u32 = 0x5afd_0e01;

/// A packet an app sends on an allowed flow may skip the bridge and the NI's routing
/// when it is neither an ICMP error nor a fragment (the kernel relates and reassembles
/// those), and it goes nowhere on the device itself (the agent's addresses, hairpin port
/// maps on the uplinks' addresses: `to_device`). A flow's first packets too: the app
/// port's program makes the flow's translation at the NI veth, as that veth's egress
/// program would; the uplink's egress program makes the one in the agent's netns, as on
/// the kernel's path; where the uplink's neighbour is not resolved yet, the FIB lookup
/// says so and the packet takes the kernel's path.
#[inline(always)]
pub fn app_packet_may_skip(flow: &Flow, to_device: bool) -> bool {
    !flow.related && flow.frag == FRAG_NONE && !to_device && !prefix_contains(VETH_NET, VETH_NET_LEN, flow.dst)
}

/// Whether an NI's routing (`fz`) forwards an app's packet (`flow`) out of its veth to
/// the agent, by its default route: every route in an NI's netns is the agent's (the
/// connected ones of the NI's subnet and of its veth, the default via the agent's
/// end), so this needs no FIB lookup. From the NI's subnet (an app's own address; the
/// guard lets an app send from 0.0.0.0 only to ask for one, which routing drops as a
/// martian), to any address but the NI's subnet (the bridge's connected route; the
/// gateway's own address is in it) and those left to the kernel's path: 0/8 and
/// loopback (martians), multicast and the broadcast (not forwarded), and with them the
/// rest of 240/4. (The veth's /24 is `app_packet_may_skip`'s to leave to the kernel's
/// path.)
#[inline(always)]
pub fn routed_to_agent(fz: &FastZone, flow: &Flow) -> bool {
    prefix_contains(fz.subnet, fz.subnet_len, flow.src)
        && !prefix_contains(fz.subnet, fz.subnet_len, flow.dst)
        && !matches!(flow.dst[0], 0 | 127 | 224..=255)
}

/// At the agent-side veth's ingress: the packet's translation for the uplink is known
/// (the original direction of a source translation made in the agent's domain), so the
/// uplink it left by before is where it leaves again.
#[inline(always)]
pub fn leaves_translated(v: &NatValue, flow: &Flow) -> bool {
    v.rewrite == REWRITE_SRC && v.flags & NAT_FLAG_ORIG != 0 && !flow.related && flow.frag == FRAG_NONE
}

/// At the agent-side veth's ingress: a packet with no translation in the agent's domain
/// yet may go to the uplink whose egress program makes it, past the agent's routing,
/// when it comes from an NI (its source the NI's end of its veth: a new flow's first
/// packet, translated at the NI veth; not an outside one at an uplink's ingress, which
/// is told so here without a map lookup) and the kernel need not relate or reassemble it.
#[inline(always)]
pub fn leaves_untranslated(flow: &Flow) -> bool {
    ni_end_zone(flow.src).is_some() && !flow.related && flow.frag == FRAG_NONE
}

/// At an ingress that just translated the packet back: a reply to a source translation
/// (never a port map's flow: those are EVE's or the outside's, and take the kernel's
/// path to the agent-side veth's own translation).
#[inline(always)]
pub fn returns_translated(v: &NatValue, flow: &Flow) -> bool {
    v.rewrite == REWRITE_DST && v.flags & NAT_FLAG_ORIG == 0 && !flow.related && flow.frag == FRAG_NONE
}

/// At an uplink's ingress, where a reply's translation back (`v`) carries its NI's
/// (`NAT_FLAG_INNER`): the app's address and port the NI's would give it, in NI `fz`.
/// None: it carries none, or one that is not an address of the NI's subnet (whose
/// first two bytes it does not carry: a subnet of /16 or longer).
#[inline(always)]
pub fn inner_destination(v: &NatValue, fz: &FastZone) -> Option<(crate::Ipv4, u16)> {
    if v.flags & NAT_FLAG_INNER == 0 || fz.subnet_len < 16 {
        return None;
    }
    let app = [fz.subnet[0], fz.subnet[1], v.inner_host[0], v.inner_host[1]];
    prefix_contains(fz.subnet, fz.subnet_len, app).then_some((app, v.inner_port))
}

/// At the NI veth, a reply the fast path sends to its app's port (`entry`: its flow's,
/// judged there; `dir`: the packet's direction in it) may skip the port's egress too,
/// handed into the app's netns, when all the to-app program would do is account it (which
/// the fast path then does as it would): the port is a veth to the app's netns (a VM's
/// tap has no other end to hand to), whose app's address is not learned from DHCP
/// replies; the flow was judged under the port's current ACL (else that program judges
/// it again), lives (neither expired nor reopened by a SYN, nor taken over by the far
/// end's answer to a connection opened again on its tuple: a new flow there), and the
/// packet is its reply, not the metadata server's answer (translated there).
#[inline(always)]
pub fn reply_may_skip_port(iface: &IfaceInfo, entry: &CtValue, dir: usize, flow: &Flow, now_ns: u64) -> bool {
    iface.flags & (IFACE_FLAG_APP_NETNS | IFACE_FLAG_IP_LEARN) == IFACE_FLAG_APP_NETNS
        && entry.acl_id == iface.acl_id
        && dir == DIR_REPLY
        && !ct::is_expired(entry, flow.proto, now_ns)
        && !(flow.proto == PROTO_TCP
            && (ct::reopened_by(entry, flow.tcp_flags, dir) || ct::takes_new_connection(entry, flow.tcp_flags, dir)))
        && !is_metadata_answer(iface, flow)
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
    fn a_translation_carries_its_nis_as_an_address_of_the_nis_subnet() {
        let fz = |subnet: crate::Ipv4, subnet_len: u8| FastZone { enabled: 1, subnet, subnet_len, ..FastZone::default() };
        let mut v = NatValue::new(0, 0, [169, 254, 100, 2], 2000, REWRITE_DST, NAT_FLAG_INNER);
        (v.inner_port, v.inner_host) = (40000, [1, 2]);
        assert_eq!(inner_destination(&v, &fz([10, 10, 1, 0], 24)), Some(([10, 10, 1, 2], 40000)));
        assert_eq!(inner_destination(&v, &fz([10, 10, 0, 0], 16)), Some(([10, 10, 1, 2], 40000)));
        assert_eq!(inner_destination(&v, &fz([10, 10, 2, 0], 24)), None, "not in the NI's subnet");
        assert_eq!(inner_destination(&v, &fz([10, 0, 0, 0], 8)), None, "a subnet shorter than /16: two bytes do not say the address");
        assert_eq!(inner_destination(&NatValue { flags: 0, ..v }, &fz([10, 10, 1, 0], 24)), None, "none carried");
        // The mark that says so, read as EVE's: a drop's, which lets no flow in.
        assert!(crate::mark::decode(NI_NAT_DONE_MARK).drop);
    }

    #[test]
    fn only_an_ni_end_of_a_veth_names_its_zone() {
        // NI 1: agent end .1, NI end .2; NI 3: .9 and .10.
        assert_eq!(ni_end_zone([169, 254, 100, 2]), Some(1));
        assert_eq!(ni_end_zone([169, 254, 100, 10]), Some(3));
        assert_eq!(ni_end_zone([169, 254, 100, 1]), None, "the agent's end is the agent's own address");
        assert_eq!(ni_end_zone([169, 254, 100, 9]), None);
        assert_eq!(ni_end_zone([169, 254, 100, 3]), None, "the /30's broadcast");
        assert_eq!(ni_end_zone([10, 254, 100, 2]), None, "outside 169.254.100.0/24");
    }

    #[test]
    fn only_plain_packets_to_the_world_skip() {
        assert!(app_packet_may_skip(&flow(), false));
        assert!(!app_packet_may_skip(&flow(), true), "to the device");
        let veth = Flow { dst: [169, 254, 100, 1], ..flow() };
        assert!(!app_packet_may_skip(&veth, false), "to an agent-side veth address");
        assert!(!app_packet_may_skip(&Flow { related: true, ..flow() }, false), "ICMP error");
        assert!(!app_packet_may_skip(&Flow { frag: FRAG_FIRST, ..flow() }, false), "fragment");
        let from_ni = Flow { src: [169, 254, 100, 2], ..flow() };
        assert!(leaves_untranslated(&from_ni));
        assert!(!leaves_untranslated(&flow()), "from outside (an uplink's ingress)");
        assert!(!leaves_untranslated(&Flow { related: true, ..from_ni }), "ICMP error");
        assert!(!leaves_untranslated(&Flow { frag: FRAG_FIRST, ..from_ni }), "fragment");
    }

    #[test]
    fn everything_from_the_subnet_to_outside_it_that_routes_goes_to_the_agent() {
        let fz = FastZone { subnet: [10, 1, 0, 0], subnet_len: 24, ..FastZone::default() };
        let to = |dst| Flow { src: [10, 1, 0, 2], dst, ..flow() };
        for dst in [[10, 99, 0, 10], [10, 1, 1, 2], [192, 168, 0, 1], [169, 254, 169, 254], [223, 255, 255, 254], [1, 0, 0, 0]] {
            assert!(routed_to_agent(&fz, &to(dst)), "{dst:?}");
        }
        for dst in [[10, 1, 0, 1], [10, 1, 0, 3], [10, 1, 0, 255], [10, 1, 0, 0]] {
            assert!(!routed_to_agent(&fz, &to(dst)), "{dst:?}: the NI's subnet, on its bridge");
        }
        for dst in [[0, 0, 0, 0], [127, 0, 0, 1], [224, 0, 0, 251], [239, 255, 255, 250], [240, 0, 0, 1], [255, 255, 255, 255]] {
            assert!(!routed_to_agent(&fz, &to(dst)), "{dst:?}: left to the kernel's path");
        }
        for src in [[0, 0, 0, 0], [10, 1, 1, 2], [192, 168, 0, 1]] {
            let from = Flow { src, dst: [10, 99, 0, 10], ..flow() };
            assert!(!routed_to_agent(&fz, &from), "{src:?}: not from the NI's subnet (a martian there)");
        }
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
    fn only_replies_the_port_would_just_count_skip_it() {
        use crate::ct::{DIR_ORIG, TCP_ESTABLISHED, TCP_FIN_WAIT, TCP_TIME_WAIT};
        let iface = IfaceInfo { acl_id: 7, gateway: [10, 1, 0, 1], flags: IFACE_FLAG_APP_NETNS, ..IfaceInfo::default() };
        let entry = CtValue { acl_id: 7, tcp_state: TCP_ESTABLISHED, last_seen_ns: 1_000, ..CtValue::default() };
        let reply = Flow { src: [10, 99, 0, 10], dst: [10, 1, 0, 2], sport: 80, dport: 40000, tcp_flags: 0x10, ..flow() };
        let now = 2_000;
        assert!(reply_may_skip_port(&iface, &entry, DIR_REPLY, &reply, now));
        let tap = IfaceInfo { flags: 0, ..iface };
        assert!(!reply_may_skip_port(&tap, &entry, DIR_REPLY, &reply, now), "a VM's tap");
        let learning = IfaceInfo { flags: IFACE_FLAG_APP_NETNS | IFACE_FLAG_IP_LEARN, ..iface };
        assert!(!reply_may_skip_port(&learning, &entry, DIR_REPLY, &reply, now), "learns its app's address");
        let changed = IfaceInfo { acl_id: 8, ..iface };
        assert!(!reply_may_skip_port(&changed, &entry, DIR_REPLY, &reply, now), "judged under another ACL");
        assert!(!reply_may_skip_port(&iface, &entry, DIR_ORIG, &reply, now), "the flow's original direction");
        assert!(!reply_may_skip_port(&iface, &entry, DIR_REPLY, &reply, u64::MAX), "expired");
        let closed = CtValue { tcp_state: TCP_TIME_WAIT, ..entry };
        let syn = Flow { tcp_flags: 0x02, ..reply };
        assert!(reply_may_skip_port(&iface, &closed, DIR_REPLY, &reply, now));
        assert!(!reply_may_skip_port(&iface, &closed, DIR_REPLY, &syn, now), "a SYN reopening a closed flow");
        let half_closed = CtValue { tcp_state: TCP_FIN_WAIT, ..entry };
        assert!(reply_may_skip_port(&iface, &half_closed, DIR_REPLY, &reply, now));
        assert!(!reply_may_skip_port(&iface, &half_closed, DIR_REPLY, &syn, now), "the far end's SYN reopening a half-closed flow");
        let syn_again = CtValue { flags: ct::FLAG_SYN_AGAIN, ..entry };
        let syn_ack = Flow { tcp_flags: 0x12, ..reply };
        assert!(reply_may_skip_port(&iface, &syn_again, DIR_REPLY, &reply, now), "the old connection's ACK");
        assert!(!reply_may_skip_port(&iface, &syn_again, DIR_REPLY, &syn_ack, now), "the far end taking the new connection");
        let metadata = Flow { src: iface.gateway, sport: 80, ..reply };
        assert!(!reply_may_skip_port(&iface, &entry, DIR_REPLY, &metadata, now), "the metadata server's answer");
    }

    #[test]
    fn a_hop_takes_one_from_the_ttl_and_never_the_last() {
        assert_eq!(after_hop([64, PROTO_TCP]), Some([63, PROTO_TCP]));
        assert_eq!(after_hop([2, 17]), Some([1, 17]));
        assert_eq!(after_hop([1, PROTO_TCP]), None);
        assert_eq!(after_hop([0, PROTO_TCP]), None);
    }
}
