//! Header parsing, written once against a tiny reader trait: the eBPF programs read
//! through `bpf_skb_load_bytes`, the host tests read from a byte slice.

use crate::{Ipv4, PROTO_ICMP, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAM_PROBLEM: u8 = 12;

/// Reads fixed-size chunks of a packet; `None` when the packet is too short.
pub trait PacketReader {
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// The whole frame's length, from its Ethernet header on.
    fn frame_len(&self) -> usize;
}

impl PacketReader for [u8] {
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let bytes = self.get(offset..offset.checked_add(N)?)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }

    fn frame_len(&self) -> usize {
        self.len()
    }
}

/// The 5-tuple of an IPv4 packet plus what the conntrack needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub src: Ipv4,
    pub dst: Ipv4,
    /// Ports for TCP/UDP; the echo identifier (both sides) for ICMP echo; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// IPv4 total length: what the flow byte counters count (as conntrack does).
    pub ip_len: u16,
    /// An ICMP error about another flow: the tuple above is the inner (quoted) packet's.
    pub related: bool,
    /// ICMP echo: the "ports" are the identifier.
    pub icmp_echo: bool,
    /// Offset of the L4 header in the frame (for an ICMP error: of the outer ICMP header).
    pub l4_off: u16,
    /// ICMP errors: offsets of the quoted IPv4 header and of its L4 header.
    pub inner_l3_off: u16,
    pub inner_l4_off: u16,
    /// The frame's Ethernet source.
    pub eth_src: [u8; 6],
    /// The packet's own IPv4 source and destination: for an ICMP error, those of the
    /// error (the tuple above is the quoted packet's); else the same as src and dst.
    pub outer_src: Ipv4,
    pub outer_dst: Ipv4,
    /// TCP: the sequence number, and where the segment ends in sequence space (sequence
    /// + payload + SYN + FIN): what an RST is checked against.
    pub tcp_seq: u32,
    pub tcp_end: u32,
    /// `FRAG_*`: whether this is an IPv4 fragment, and which.
    pub frag: u8,
    /// The IPv4 identification: ties a datagram's fragments together.
    pub ip_id: u16,
}

/// Not a fragment.
pub const FRAG_NONE: u8 = 0;
/// The first fragment (offset 0, more to come): it carries the L4 header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header; its ports come from the first (see `frag`).
pub const FRAG_LATER: u8 = 2;

impl Flow {
    /// Turns the flow into the one a packet in the other direction has (addresses and
    /// ports swapped): a reply's flow into the one its first packet had. In place: a
    /// copy would cost the program's small stack.
    #[inline(always)]
    pub fn reverse(&mut self) {
        core::mem::swap(&mut self.src, &mut self.dst);
        core::mem::swap(&mut self.sport, &mut self.dport);
    }
}

/// What an ARP packet says about its sender (Ethernet/IPv4 ARP; other hardware or
/// protocol types leave the fields zero, which no port accepts as its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arp {
    pub eth_src: [u8; 6],
    pub op: u16,
    /// Sender hardware and protocol address.
    pub sha: [u8; 6],
    pub spa: Ipv4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    Arp(Arp),
    Ipv4(Flow),
    /// Anything else (IPv6, VLAN tags, LLDP, ...), with its EtherType.
    Other(u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its headers claim.
    Truncated,
    /// Version not 4, header length below 20, or total length below the header.
    BadIpHeader,
}

/// Parses an Ethernet frame far enough to classify it.
#[inline(always)]
pub fn parse<R: PacketReader + ?Sized>(pkt: &R) -> Result<Parsed, ParseError> {
    let eth: [u8; ETH_HLEN] = pkt.read(0).ok_or(ParseError::Truncated)?;
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let eth_src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    match ethertype {
        ETH_P_ARP => parse_arp(pkt, eth_src).map(Parsed::Arp),
        ETH_P_IP => parse_ipv4(pkt, ETH_HLEN).map(|f| Parsed::Ipv4(Flow { eth_src, ..f })),
        other => Ok(Parsed::Other(other)),
    }
}

/// htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4.
const ARP_ETHER_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];

#[inline(always)]
fn parse_arp<R: PacketReader + ?Sized>(pkt: &R, eth_src: [u8; 6]) -> Result<Arp, ParseError> {
    let a: [u8; 28] = pkt.read(ETH_HLEN).ok_or(ParseError::Truncated)?;
    let mut arp = Arp { eth_src, op: u16::from_be_bytes([a[6], a[7]]), ..Arp::default() };
    if a[..6] == ARP_ETHER_IPV4 {
        arp.sha = [a[8], a[9], a[10], a[11], a[12], a[13]];
        arp.spa = [a[14], a[15], a[16], a[17]];
    }
    Ok(arp)
}

#[inline(always)]
fn parse_ipv4<R: PacketReader + ?Sized>(pkt: &R, off: usize) -> Result<Flow, ParseError> {
    let ip: [u8; 20] = pkt.read(off).ok_or(ParseError::Truncated)?;
    let (ihl, proto, src, dst, total_len, frag) = ipv4_fields(&ip)?;
    // A packet longer than its frame is malformed (the kernel's `ip_rcv` drops it; the
    // fast path skips that): it would count bytes it does not have. Padding after the
    // packet is the frame's, not the packet's: no header field is read from it
    // (`read_within`). (No `end` kept beside `total_len`: 6.1's verifier allows 512
    // bytes of stack across a program's calls, and the from-app program is within a few
    // of it.)
    if off + total_len as usize > pkt.frame_len() {
        return Err(ParseError::Truncated);
    }
    let l4 = off + ihl;
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    let mut flow = Flow { proto, src, dst, ip_len: total_len, l4_off: l4 as u16, outer_src: src, outer_dst: dst, ip_id, ..Flow::default() };
    if frag & 0x1fff != 0 {
        // No L4 header here: the caller takes the ports from the first fragment.
        flow.frag = FRAG_LATER;
        return Ok(flow);
    }
    if frag & 0x2000 != 0 {
        flow.frag = FRAG_FIRST;
    }
    match proto {
        PROTO_TCP => {
            let tcp: [u8; 14] = read_within(pkt, l4, ihl, total_len)?;
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_flags = tcp[13];
            flow.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
            let header = (ihl + (tcp[12] >> 4) as usize * 4) as u32;
            let payload = (total_len as u32).saturating_sub(header);
            let flags = tcp[13];
            let syn_fin = ((flags & TCP_SYN != 0) as u32) + ((flags & TCP_FIN != 0) as u32);
            flow.tcp_end = flow.tcp_seq.wrapping_add(payload).wrapping_add(syn_fin);
        }
        PROTO_UDP => {
            let udp: [u8; 4] = read_within(pkt, l4, ihl, total_len)?;
            flow.sport = u16::from_be_bytes([udp[0], udp[1]]);
            flow.dport = u16::from_be_bytes([udp[2], udp[3]]);
        }
        PROTO_ICMP => {
            let icmp: [u8; 8] = read_within(pkt, l4, ihl, total_len)?;
            match icmp[0] {
                ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => {
                    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
                    flow.sport = id;
                    flow.dport = id;
                    flow.icmp_echo = true;
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAM_PROBLEM => {
                    let inner = parse_icmp_error_inner(pkt, l4 + 8, ihl + 8, total_len)?;
                    return Ok(Flow { l4_off: l4 as u16, outer_src: src, outer_dst: dst, ..inner });
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(flow)
}

/// `N` bytes at `off`, which lies `into` bytes into an IPv4 packet of `total_len`: all of
/// them inside the packet.
#[inline(always)]
fn read_within<R: PacketReader + ?Sized, const N: usize>(pkt: &R, off: usize, into: usize, total_len: u16) -> Result<[u8; N], ParseError> {
    if into + N > total_len as usize {
        return Err(ParseError::Truncated);
    }
    pkt.read(off).ok_or(ParseError::Truncated)
}

/// The packet quoted in an ICMP error (at `off`, `into` bytes into the error's IPv4
/// packet of `outer_len`): its IPv4 header and the first 8 bytes of L4.
#[inline(always)]
fn parse_icmp_error_inner<R: PacketReader + ?Sized>(pkt: &R, off: usize, into: usize, outer_len: u16) -> Result<Flow, ParseError> {
    let ip: [u8; 20] = read_within(pkt, off, into, outer_len)?;
    let (ihl, proto, src, dst, _, _) = ipv4_fields(&ip)?;
    let l4: [u8; 8] = read_within(pkt, off + ihl, into + ihl, outer_len)?;
    let mut icmp_echo = false;
    let (sport, dport) = match proto {
        PROTO_TCP | PROTO_UDP => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        PROTO_ICMP => {
            icmp_echo = true;
            let id = u16::from_be_bytes([l4[4], l4[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Ok(Flow {
        proto,
        src,
        dst,
        sport,
        dport,
        ip_len: outer_len,
        related: true,
        icmp_echo,
        inner_l3_off: off as u16,
        inner_l4_off: (off + ihl) as u16,
        ..Flow::default()
    })
}

type Ipv4Fields = (usize, u8, Ipv4, Ipv4, u16, u16);

#[inline(always)]
fn ipv4_fields(ip: &[u8; 20]) -> Result<Ipv4Fields, ParseError> {
    if ip[0] >> 4 != 4 {
        return Err(ParseError::BadIpHeader);
    }
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]);
    if ihl < 20 || (total_len as usize) < ihl {
        return Err(ParseError::BadIpHeader);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    Ok((ihl, ip[9], [ip[12], ip[13], ip[14], ip[15]], [ip[16], ip[17], ip[18], ip[19]], total_len, frag))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds Ethernet+IPv4+L4 frames for tests (checksums are not looked at).
    pub fn frame(proto: u8, src: Ipv4, dst: Ipv4, l4: &[u8]) -> [u8; 128] {
        let mut f = [0u8; 128];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f[34..34 + l4.len()].copy_from_slice(l4);
        f
    }

    pub fn tcp(sport: u16, dport: u16, flags: u8) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    const A: Ipv4 = [10, 10, 1, 2];
    const B: Ipv4 = [10, 10, 1, 3];

    #[test]
    fn a_packet_longer_than_its_frame_or_headers_past_its_end_are_truncated() {
        let mut f = frame(PROTO_UDP, A, B, &[0x9c, 0x40, 0x23, 0x29, 0, 8, 0, 0]);
        assert!(matches!(parse(&f[..42]), Ok(Parsed::Ipv4(_))), "whole");
        assert!(matches!(parse(&f[..60]), Ok(Parsed::Ipv4(_))), "padded to the Ethernet minimum");
        // Claims 65,535 bytes in a 42-byte frame: it would count what it does not carry.
        f[16..18].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&f[..42]), Err(ParseError::Truncated));
        // A TCP first fragment of 4 bytes (its ports) in a padded frame: its flags would be
        // read from the padding.
        let mut t = frame(PROTO_TCP, A, B, &tcp(40000, 80, TCP_SYN));
        t[16..18].copy_from_slice(&24u16.to_be_bytes());
        t[20] = 0x20;
        assert_eq!(parse(&t[..60]), Err(ParseError::Truncated));
        // An ICMP error whose quote runs past the error's end.
        let mut e = frame(PROTO_ICMP, A, B, &[3, 3, 0, 0, 0, 0, 0, 0]);
        e[16..18].copy_from_slice(&(20u16 + 8 + 20).to_be_bytes());
        e[42] = 0x45;
        e[44..46].copy_from_slice(&28u16.to_be_bytes());
        assert_eq!(parse(&e[..90]), Err(ParseError::Truncated), "20 bytes of the quote's header, none of its ports");
    }

    #[test]
    fn tcp_syn() {
        let f = frame(PROTO_TCP, A, B, &tcp(40000, 80, TCP_SYN));
        let Parsed::Ipv4(flow) = parse(&f[..54]).unwrap() else { panic!() };
        assert_eq!((flow.src, flow.dst, flow.sport, flow.dport), (A, B, 40000, 80));
        assert_eq!(flow.tcp_flags, TCP_SYN);
        assert_eq!(flow.ip_len, 40);
        assert_eq!(flow.l4_off, 34);
        assert_eq!((flow.outer_src, flow.outer_dst), (A, B));
        assert!(!flow.related);
    }

    #[test]
    fn udp_and_icmp_echo() {
        let f = frame(PROTO_UDP, A, B, &[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
        let Parsed::Ipv4(flow) = parse(&f[..42]).unwrap() else { panic!() };
        assert_eq!((flow.sport, flow.dport), (12345, 53));
        let f = frame(PROTO_ICMP, A, B, &[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        let Parsed::Ipv4(flow) = parse(&f[..42]).unwrap() else { panic!() };
        assert_eq!((flow.sport, flow.dport), (0x1234, 0x1234));
    }

    #[test]
    fn icmp_error_yields_inner_tuple() {
        // Port unreachable from B quoting A's UDP packet to B:9999.
        let inner = frame(PROTO_UDP, A, B, &[0x30, 0x39, 0x27, 0x0f, 0, 8, 0, 0]);
        let mut l4 = [0u8; 36];
        l4[0] = 3;
        l4[1] = 3;
        l4[8..36].copy_from_slice(&inner[14..42]);
        let f = frame(PROTO_ICMP, B, A, &l4);
        let Parsed::Ipv4(flow) = parse(&f[..70]).unwrap() else { panic!() };
        assert!(flow.related);
        assert_eq!((flow.proto, flow.src, flow.dst, flow.sport, flow.dport), (PROTO_UDP, A, B, 12345, 9999));
        assert_eq!((flow.outer_src, flow.outer_dst), (B, A));
        assert_eq!((flow.l4_off, flow.inner_l3_off, flow.inner_l4_off), (34, 42, 62));
    }

    #[test]
    fn arp_and_others() {
        let mut f = [0u8; 42];
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..20].copy_from_slice(&ARP_ETHER_IPV4);
        f[20..22].copy_from_slice(&1u16.to_be_bytes());
        f[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        f[28..32].copy_from_slice(&A);
        let arp = Arp { eth_src: [2, 0, 0, 0, 0, 9], op: 1, sha: [2, 0, 0, 0, 0, 7], spa: A };
        assert_eq!(parse(&f[..]), Ok(Parsed::Arp(arp)));
        assert_eq!(parse(&f[..40]), Err(ParseError::Truncated));
        // Not Ethernet/IPv4 ARP: no sender to trust.
        f[15] = 6;
        assert_eq!(parse(&f[..]), Ok(Parsed::Arp(Arp { eth_src: arp.eth_src, op: 1, ..Arp::default() })));
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(parse(&f[..]), Ok(Parsed::Other(0x86dd)));
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let f = frame(PROTO_TCP, A, B, &tcp(1, 2, TCP_SYN));
        // Every truncation of a valid frame parses or errors, never panics.
        for len in 0..54 {
            let r = parse(&f[..len]);
            assert!(len < 14 || r.is_err() || matches!(r, Ok(Parsed::Ipv4(_))), "len {len}: {r:?}");
        }
        assert_eq!(parse(&f[..40]), Err(ParseError::Truncated));
        let mut bad = f;
        bad[14] = 0x65; // IPv6 version nibble in an IPv4 frame
        assert_eq!(parse(&bad[..]), Err(ParseError::BadIpHeader));
        bad[14] = 0x44; // IHL 16 bytes
        assert_eq!(parse(&bad[..]), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn fragments_say_which_they_are() {
        let f = frame(PROTO_TCP, A, B, &tcp(1, 2, TCP_SYN));
        let mut frag = f;
        frag[18..20].copy_from_slice(&0x4242u16.to_be_bytes());
        frag[20] = 0x00;
        frag[21] = 0x10; // offset 16*8
        let Ok(Parsed::Ipv4(later)) = parse(&frag[..]) else { panic!() };
        assert_eq!((later.frag, later.ip_id, later.sport, later.dport, later.tcp_flags), (FRAG_LATER, 0x4242, 0, 0, 0));
        // A first fragment (MF set, offset 0) still has its L4 header.
        frag[20] = 0x20;
        frag[21] = 0;
        let Ok(Parsed::Ipv4(first)) = parse(&frag[..]) else { panic!() };
        assert_eq!((first.frag, first.sport, first.dport), (FRAG_FIRST, 1, 2));
        let Ok(Parsed::Ipv4(whole)) = parse(&f[..]) else { panic!() };
        assert_eq!(whole.frag, FRAG_NONE);
    }

    #[test]
    fn tcp_segment_end() {
        let mut t = tcp(1, 2, TCP_SYN);
        t[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        let f = frame(PROTO_TCP, A, B, &t);
        let Parsed::Ipv4(syn) = parse(&f[..54]).unwrap() else { panic!() };
        assert_eq!((syn.tcp_seq, syn.tcp_end), (0xffff_fff0, 0xffff_fff1));
        // 20 bytes of payload after the header, sequence space wraps.
        let mut l4 = [0u8; 40];
        l4[..20].copy_from_slice(&tcp(1, 2, TCP_ACK | TCP_FIN));
        l4[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        let f = frame(PROTO_TCP, A, B, &l4);
        let Parsed::Ipv4(data) = parse(&f[..74]).unwrap() else { panic!() };
        assert_eq!(data.tcp_end, 0xffff_fff0u32.wrapping_add(21));
    }

    #[test]
    fn ip_options_move_the_l4_header() {
        let mut l4 = [0u8; 24];
        l4[4..24].copy_from_slice(&tcp(7, 8, TCP_ACK));
        let mut f = frame(PROTO_TCP, A, B, &l4);
        f[14] = 0x46; // IHL 24: 4 bytes of options before TCP
        let Parsed::Ipv4(flow) = parse(&f[..]).unwrap() else { panic!() };
        assert_eq!((flow.sport, flow.dport, flow.tcp_flags), (7, 8, TCP_ACK));
        assert_eq!(flow.l4_off, 38);
    }
}
