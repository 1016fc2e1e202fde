//! Who an app may claim to be. An app is untrusted code: every frame it sends may lie
//! about its sender (MAC, IPv4 source, ARP sender) or quote a flow it has no business
//! with (ICMP errors). The app-port programs run these checks on every packet from the
//! app before conntrack sees it; a refusal names the counter it goes to.

use crate::{
    packet::{Arp, Flow, FRAG_NONE},
    IfaceInfo, Ipv4, Stat, IFACE_FLAG_CHECK_MAC, IFACE_FLAG_IP_KNOWN, IFACE_FLAG_SWITCH, PROTO_UDP,
};

const UNSPECIFIED: [u8; 4] = [0; 4];

#[inline(always)]
fn mac_ok(iface: &IfaceInfo, mac: &[u8; 6]) -> bool {
    iface.flags & IFACE_FLAG_CHECK_MAC == 0 || *mac == iface.app_mac
}

/// Whether the port knows the app's address: always on a local NI (the agent gives it);
/// on a switch NI once configured or learned from the DHCP server outside (until then
/// the app may only ask for one).
#[inline(always)]
fn ip_known(iface: &IfaceInfo) -> bool {
    iface.flags & IFACE_FLAG_SWITCH == 0 || iface.flags & IFACE_FLAG_IP_KNOWN != 0
}

/// An IPv4 packet from the app: its frame must come from the app's MAC and its source
/// must be the app's address; 0.0.0.0 only for a DHCP client's request to a server.
#[inline(always)]
pub fn from_app_ipv4(iface: &IfaceInfo, flow: &Flow) -> Result<(), Stat> {
    if !mac_ok(iface, &flow.eth_src) {
        return Err(Stat::DropSpoofed);
    }
    if ip_known(iface) && flow.outer_src == iface.app_ip {
        return Ok(());
    }
    if is_dhcp_request(flow) {
        Ok(())
    } else {
        Err(Stat::DropSpoofed)
    }
}

/// A DHCP client's request before it has an address (0.0.0.0:68 -> :67). Every app's
/// looks the same (one conntrack tuple for all of an NI's clients), so such an entry
/// goes to whichever port sends one.
#[inline(always)]
pub fn is_dhcp_request(flow: &Flow) -> bool {
    flow.outer_src == UNSPECIFIED && flow.proto == PROTO_UDP && flow.sport == 68 && flow.dport == 67 && !flow.related
}

/// What a DHCP server takes for a client's message: UDP to its port 67, from any source
/// address and any source port (dnsmasq answers a message from any port, and takes one
/// from :67 with a relay address as relayed). Every one the app sends is checked for
/// the client it names (`dhcp_client_is_app`), so an app's UDP to port 67 anywhere must
/// be a BOOTP message naming the app.
#[inline(always)]
pub fn is_dhcp_client(flow: &Flow) -> bool {
    flow.proto == PROTO_UDP && flow.dport == 67 && !flow.related
}

/// Where a BOOTP message's client MAC (`chaddr`) starts, from the UDP header's start.
pub const DHCP_CHADDR_OFFSET: usize = 8 + 28;

/// Whether a DHCP client's message from the app names the app as its client: the DHCP
/// server keys its leases by the client MAC inside the message (`chaddr`), not by the
/// frame's, so a DECLINE or RELEASE naming a neighbour's MAC would cost the neighbour
/// its address, and DISCOVERs naming made-up MACs would take the pool. `chaddr`: the
/// message's, None when the packet is too short for one or a fragment (a real client's
/// message is whole; a fragmented one could carry its client MAC past this check). A
/// port that does not check MACs (a VM's tap without one configured) passes any.
#[inline(always)]
pub fn dhcp_client_is_app(iface: &IfaceInfo, frag: u8, chaddr: Option<[u8; 6]>) -> bool {
    iface.flags & IFACE_FLAG_CHECK_MAC == 0 || (frag == FRAG_NONE && chaddr == Some(iface.app_mac))
}

/// An ARP packet from the app: sent from, and naming as its sender, the app's MAC and
/// the app's address (or 0.0.0.0: a probe before the address is taken).
#[inline(always)]
pub fn from_app_arp(iface: &IfaceInfo, arp: &Arp) -> Result<(), Stat> {
    if !mac_ok(iface, &arp.eth_src) || !mac_ok(iface, &arp.sha) {
        return Err(Stat::DropSpoofed);
    }
    if arp.spa != UNSPECIFIED && !(ip_known(iface) && arp.spa == iface.app_ip) {
        return Err(Stat::DropSpoofed);
    }
    Ok(())
}

/// Whether a frame the bridge hands this port on its way to the app is addressed to
/// another port's app: a copy the bridge flooded (a unicast frame for a MAC whose port it
/// no longer knows, or a broadcast frame carrying a packet for one address), or a frame
/// for this app's MAC carrying a packet for another address (another app's covert
/// channel: its own ACL judged the packet, for a remote it may reach). It is not
/// this app's to judge: judged here, it would make the flow's entry this port's (the
/// app it is for could then not answer, `ct::port_may_send`) or let it through under
/// this app's ACL (the entry serves the packet at the right port too). Its app would
/// not take it either, but for sniffing. `dst_mac`: the frame's destination; `dst`: the
/// packet's own destination (an ICMP error's, not the quoted packet's); `other_app`:
/// whether `dst` is the address of another app of the NI (EIDSET, asked only for a group
/// frame); `dhcp_reply`: a DHCP server's reply (`is_dhcp_reply`), which may go to the
/// app's MAC at the address it offers (a new one, on a switch NI). A broadcast or
/// multicast packet (to the subnet, to all) is every app's; a frame to a MAC the port
/// does not know (a VM's tap without a configured MAC) is told by its address alone.
#[inline(always)]
pub fn for_another_port(iface: &IfaceInfo, dst_mac: &[u8; 6], dst: Ipv4, dhcp_reply: bool, other_app: impl FnOnce() -> bool) -> bool {
    if dst_mac[0] & 1 == 0 {
        return !mac_ok(iface, dst_mac) || ip_known(iface) && dst != iface.app_ip && !dhcp_reply;
    }
    ip_known(iface) && dst != iface.app_ip && other_app()
}

/// BOOTP's fixed header up to the client's MAC: op, htype, hlen, hops, xid, secs, flags,
/// ciaddr, yiaddr (16), siaddr, giaddr, chaddr (28).
pub const BOOTP_PREFIX: usize = 34;

/// A DHCP server's reply (UDP :67 -> :68, whole): the only packet whose BOOTP header is
/// worth reading (checked first, so other packets cost no extra load).
#[inline(always)]
pub fn is_dhcp_reply(flow: &Flow) -> bool {
    flow.proto == PROTO_UDP && flow.sport == 67 && flow.dport == 68 && !flow.related && flow.frag == FRAG_NONE
}

/// The address a DHCP server's reply (an OFFER, then the ACK; see `is_dhcp_reply`) gives
/// the app behind this port: a BOOTREPLY naming the app's MAC, with a yiaddr. The last
/// one seen is the app's (the ACK comes after the OFFER; a NAK carries none).
#[inline(always)]
pub fn dhcp_reply_address(iface: &IfaceInfo, bootp: &[u8; BOOTP_PREFIX]) -> Option<Ipv4> {
    let yiaddr = [bootp[16], bootp[17], bootp[18], bootp[19]];
    let for_app = bootp[0] == 2 && bootp[28..34] == iface.app_mac;
    (for_app && yiaddr != UNSPECIFIED).then_some(yiaddr)
}

/// An ICMP error is about a packet its receiver sent: the error goes to the quoted
/// packet's source, as the kernel requires. One the app sends is about a packet the app
/// received: the quoted destination is the app's own address. Anything else would let
/// an app (or anyone) carry data to an address no ACL allowed, riding a live flow.
#[inline(always)]
pub fn icmp_error_fits(flow: &Flow, from_app: bool) -> bool {
    flow.outer_dst == flow.src && (!from_app || flow.dst == flow.outer_src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTO_TCP;

    const MAC: [u8; 6] = [2, 0x16, 0x3e, 1, 1, 1];
    const APP: [u8; 4] = [10, 10, 1, 2];
    const OTHER: [u8; 4] = [10, 10, 1, 3];

    fn iface(flags: u32) -> IfaceInfo {
        IfaceInfo { app_ip: APP, app_mac: MAC, flags: flags | IFACE_FLAG_CHECK_MAC, ..IfaceInfo::default() }
    }

    #[test]
    fn a_frame_for_another_port_is_told_by_its_mac_or_its_address() {
        let port = iface(0);
        let never = || -> bool { panic!("EIDSET asked for a unicast frame") };
        assert!(!for_another_port(&port, &MAC, APP, false, never), "the app's own frame");
        assert!(for_another_port(&port, &[2, 0x16, 0x3e, 1, 2, 1], OTHER, false, never), "flooded: another app's MAC");
        let unknown_mac = IfaceInfo { flags: 0, ..port };
        assert!(!for_another_port(&unknown_mac, &[2, 0, 0, 0, 0, 9], APP, false, never), "a VM's tap whose MAC is not configured");
        const BROADCAST: [u8; 6] = [0xff; 6];
        assert!(for_another_port(&port, &BROADCAST, OTHER, false, || true), "broadcast frame, another app's address");
        assert!(!for_another_port(&port, &BROADCAST, APP, false, || true), "broadcast frame, the app's own address");
        assert!(!for_another_port(&port, &BROADCAST, [10, 10, 1, 255], false, || false), "the subnet's broadcast");
        assert!(!for_another_port(&port, &[0x01, 0, 0x5e, 0, 0, 0xfb], [224, 0, 0, 251], false, || false), "multicast");
        let learning = iface(IFACE_FLAG_SWITCH);
        assert!(!for_another_port(&learning, &BROADCAST, OTHER, false, || true), "a switch port that has not learned its app's address");
        // The app's MAC, someone else's packet: a neighbour that may reach that remote
        // would have a channel to this app past both ACLs.
        assert!(for_another_port(&port, &MAC, [10, 99, 0, 10], false, never), "the app's MAC, a remote's address");
        assert!(for_another_port(&port, &MAC, [10, 10, 1, 255], false, never), "the app's MAC, the subnet's broadcast");
        assert!(!for_another_port(&learning, &MAC, [10, 10, 1, 7], false, never), "a switch port that has not learned its app's address");
        // A DHCP server's reply to the app's MAC may name a new address; one to another
        // MAC is still another port's.
        assert!(!for_another_port(&port, &MAC, [10, 10, 1, 7], true, never), "a DHCP reply at the address it offers");
        assert!(for_another_port(&port, &[2, 0x16, 0x3e, 1, 2, 1], OTHER, true, never), "a flooded DHCP reply for another app");
    }

    #[test]
    fn a_dhcp_client_message_must_name_the_apps_own_mac() {
        let checked = iface(0);
        assert!(dhcp_client_is_app(&checked, FRAG_NONE, Some(MAC)));
        assert!(!dhcp_client_is_app(&checked, FRAG_NONE, Some([2, 0x16, 0x3e, 1, 2, 1])), "a neighbour's MAC");
        assert!(!dhcp_client_is_app(&checked, FRAG_NONE, None), "too short for a client MAC");
        assert!(!dhcp_client_is_app(&checked, crate::packet::FRAG_FIRST, Some(MAC)), "a fragment");
        let unchecked = IfaceInfo { flags: 0, ..checked };
        assert!(dhcp_client_is_app(&unchecked, FRAG_NONE, Some([2, 0, 0, 0, 0, 9])), "a port without a known MAC");
        let client = Flow { proto: PROTO_UDP, sport: 68, dport: 67, ..Flow::default() };
        assert!(is_dhcp_client(&client) && is_dhcp_client(&Flow { src: APP, outer_src: APP, ..client }));
        assert!(is_dhcp_client(&Flow { sport: 12345, ..client }) && is_dhcp_client(&Flow { sport: 67, ..client }), "any source port");
        assert!(!is_dhcp_client(&Flow { dport: 68, ..client }) && !is_dhcp_client(&Flow { related: true, ..client }));
        assert!(!is_dhcp_client(&Flow { proto: PROTO_TCP, ..client }));
    }

    fn tcp_from(mac: [u8; 6], src: [u8; 4]) -> Flow {
        Flow { proto: PROTO_TCP, src, dst: [1, 2, 3, 4], outer_src: src, outer_dst: [1, 2, 3, 4], eth_src: mac, ..Flow::default() }
    }

    #[test]
    fn an_app_sends_as_itself_only() {
        let i = iface(0);
        assert_eq!(from_app_ipv4(&i, &tcp_from(MAC, APP)), Ok(()));
        assert_eq!(from_app_ipv4(&i, &tcp_from(MAC, OTHER)), Err(Stat::DropSpoofed), "a neighbour's address");
        assert_eq!(from_app_ipv4(&i, &tcp_from([2, 0, 0, 0, 0, 1], APP)), Err(Stat::DropSpoofed), "another MAC");
        let dhcp = Flow { proto: PROTO_UDP, sport: 68, dport: 67, outer_src: UNSPECIFIED, eth_src: MAC, ..Flow::default() };
        assert_eq!(from_app_ipv4(&i, &dhcp), Ok(()), "DHCP before the address");
        assert_eq!(from_app_ipv4(&i, &Flow { dport: 53, ..dhcp }), Err(Stat::DropSpoofed), "0.0.0.0 for anything else");
        // A switch NI's app before its address is known: DHCP only.
        let s = iface(IFACE_FLAG_SWITCH);
        assert_eq!(from_app_ipv4(&s, &tcp_from(MAC, APP)), Err(Stat::DropSpoofed));
        assert_eq!(from_app_ipv4(&s, &dhcp), Ok(()));
        // Once known (configured or learned), as on a local NI.
        let s = iface(IFACE_FLAG_SWITCH | IFACE_FLAG_IP_KNOWN);
        assert_eq!(from_app_ipv4(&s, &tcp_from(MAC, APP)), Ok(()));
        assert_eq!(from_app_ipv4(&s, &tcp_from(MAC, OTHER)), Err(Stat::DropSpoofed));
        assert_eq!(from_app_ipv4(&s, &tcp_from([2, 0, 0, 0, 0, 1], APP)), Err(Stat::DropSpoofed));
        // A VM whose MAC nobody configured: its address only.
        let vm = IfaceInfo { flags: 0, ..i };
        assert_eq!(from_app_ipv4(&vm, &tcp_from([2, 0, 0, 0, 0, 1], APP)), Ok(()));
    }

    #[test]
    fn arp_names_the_app_itself() {
        let i = iface(0);
        let arp = Arp { eth_src: MAC, op: 1, sha: MAC, spa: APP };
        assert_eq!(from_app_arp(&i, &arp), Ok(()));
        assert_eq!(from_app_arp(&i, &Arp { spa: UNSPECIFIED, ..arp }), Ok(()), "a probe");
        assert_eq!(from_app_arp(&i, &Arp { spa: OTHER, ..arp }), Err(Stat::DropSpoofed), "claims a neighbour's IP");
        assert_eq!(from_app_arp(&i, &Arp { sha: [2, 0, 0, 0, 0, 1], ..arp }), Err(Stat::DropSpoofed));
        assert_eq!(from_app_arp(&i, &Arp { eth_src: [2, 0, 0, 0, 0, 1], ..arp }), Err(Stat::DropSpoofed));
        assert_eq!(from_app_arp(&i, &Arp::default()), Err(Stat::DropSpoofed), "not Ethernet/IPv4 ARP");
        // A switch NI's app: probes until its address is known.
        let s = iface(IFACE_FLAG_SWITCH);
        assert_eq!(from_app_arp(&s, &Arp { spa: UNSPECIFIED, ..arp }), Ok(()));
        assert_eq!(from_app_arp(&s, &arp), Err(Stat::DropSpoofed));
        assert_eq!(from_app_arp(&iface(IFACE_FLAG_SWITCH | IFACE_FLAG_IP_KNOWN), &arp), Ok(()));
    }

    #[test]
    fn dhcp_replies_teach_the_apps_address() {
        let i = iface(IFACE_FLAG_SWITCH);
        let flow = Flow { proto: PROTO_UDP, sport: 67, dport: 68, ..Flow::default() };
        let mut bootp = [0u8; BOOTP_PREFIX];
        bootp[0] = 2;
        bootp[16..20].copy_from_slice(&[192, 168, 3, 6]);
        bootp[28..34].copy_from_slice(&MAC);
        assert!(is_dhcp_reply(&flow));
        assert_eq!(dhcp_reply_address(&i, &bootp), Some([192, 168, 3, 6]));
        let mut other = bootp;
        other[28] = 0x42;
        assert_eq!(dhcp_reply_address(&i, &other), None, "another client's lease");
        let mut request = bootp;
        request[0] = 1;
        assert_eq!(dhcp_reply_address(&i, &request), None, "a BOOTREQUEST");
        let mut nak = bootp;
        nak[16..20].copy_from_slice(&UNSPECIFIED);
        assert_eq!(dhcp_reply_address(&i, &nak), None);
        assert!(!is_dhcp_reply(&Flow { sport: 53, ..flow }), "not from a server port");
    }

    #[test]
    fn icmp_errors_must_fit_their_quoted_flow() {
        // The app's allowed flow APP:40000 -> 1.2.3.4:443 is quoted.
        let quoted = Flow { proto: PROTO_TCP, src: APP, dst: [1, 2, 3, 4], sport: 40000, dport: 443, related: true, ..Flow::default() };
        // A router's error about the app's packet, on its way to the app: fits.
        assert!(icmp_error_fits(&Flow { outer_src: [9, 9, 9, 9], outer_dst: APP, ..quoted }, false));
        // The app "answering" its own flow's packet toward a third host: the exfiltration.
        assert!(!icmp_error_fits(&Flow { outer_src: APP, outer_dst: [6, 6, 6, 6], ..quoted }, true));
        // The app's error about a packet it received from 1.2.3.4: quoted reversed.
        let received = Flow { src: [1, 2, 3, 4], dst: APP, sport: 443, dport: 40000, ..quoted };
        assert!(icmp_error_fits(&Flow { outer_src: APP, outer_dst: [1, 2, 3, 4], ..received }, true));
        // ... but not one claiming to be from someone else's packet.
        assert!(!icmp_error_fits(&Flow { outer_src: APP, outer_dst: [1, 2, 3, 4], dst: OTHER, ..received }, true));
    }
}
