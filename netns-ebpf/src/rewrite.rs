//! In-place header rewrites with incremental checksum fixes: the TCP, UDP and ICMP sums
//! (and DCCP's and UDP-Lite's, for an address) by the kernel's helpers (which know how
//! far the kernel has computed them), the IPv4 header's own sum here (`csum`) with the
//! bytes written directly (`skb::write`).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netns_ebpf_common::{
    csum,
    nat::{NatKey, NatValue, REWRITE_SRC},
    packet::{Flow, PacketReader, ETH_HLEN, FRAG_LATER},
    PROTO_DCCP, PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_UDPLITE,
};

use crate::skb::{write, Skb};

const IP_CSUM: usize = ETH_HLEN + 10;
/// The L4 header's offset, masked before the writes at offsets derived from it: the
/// parser's offsets end by `ETH_HLEN + 60` (the longest IPv4 header), so the mask changes
/// none, and it gives the verifier a bound for each offset computed from it (6.1's does
/// not carry a bound checked on one register over to another derived from it earlier,
/// as the compiler arranges `skb::write`'s check).
const L4_OFF_MASK: usize = 0x7f;
const _: () = assert!(ETH_HLEN + 60 <= L4_OFF_MASK);
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

/// Applies `v` (new source or destination address and port) to the packet and to `flow`.
#[inline(always)]
pub fn apply(ctx: &TcContext, flow: &mut Flow, v: &NatValue) -> Result<(), ()> {
    let src = v.rewrite == REWRITE_SRC;
    // A later fragment carries no L4 header: its ports and L4 checksum were in the
    // first fragment, rewritten there; only its addresses change.
    let l4_proto = if flow.frag == FRAG_LATER { 0 } else { flow.proto };
    match l4_proto {
        PROTO_TCP | PROTO_UDP if src => tcp_udp(ctx, flow.proto, flow.l4_off, true, &flow.src, &flow.sport, v)?,
        PROTO_TCP | PROTO_UDP => tcp_udp(ctx, flow.proto, flow.l4_off, false, &flow.dst, &flow.dport, v)?,
        _ => {
            let (old_ip, ip_off) = if src { (flow.src, IP_SRC) } else { (flow.dst, IP_DST) };
            let old_port = if src { flow.sport } else { flow.dport };
            if l4_proto == PROTO_ICMP && flow.icmp_echo && old_port != v.port {
                // The echo identifier plays the port; no pseudo header in ICMP's sum.
                let l4 = flow.l4_off as usize & L4_OFF_MASK;
                ctx.l4_csum_replace(l4 + 2, port_raw(old_port), port_raw(v.port), 2).map_err(|_| ())?;
                write(ctx, l4 + 4, &v.port.to_be_bytes())?;
            }
            if let Some(flags) = pseudo_header_sum_flags(l4_proto) {
                // The address is in their sum (a receiver drops the datagram unless it
                // follows); a packet too short to hold the sum fails here: malformed.
                let l4 = flow.l4_off as usize & L4_OFF_MASK;
                ctx.l4_csum_replace(l4 + PSEUDO_SUM_OFF, ip_raw(&old_ip), ip_raw(&v.addr), flags | 4).map_err(|_| ())?;
            }
            ip_address(ctx, ip_off, &old_ip, &v.addr)?;
        }
    }
    if src {
        flow.src = v.addr;
        flow.sport = v.port;
    } else {
        flow.dst = v.addr;
        flow.dport = v.port;
    }
    if flow.icmp_echo {
        flow.sport = v.port;
        flow.dport = v.port;
    }
    Ok(())
}

/// `apply` for the fast path (`fast::past_ni_veth`): a TCP or UDP packet's source, from
/// `old` (the packet's NAT key) to `new`. The packet's `Flow` is left as it was (its
/// caller is done with it).
#[inline(always)]
pub fn tcp_udp_source(ctx: &TcContext, l4_off: u16, old: &NatKey, new: &NatValue) -> Result<(), ()> {
    tcp_udp(ctx, old.proto, l4_off, true, &old.src, &old.sport, new)
}

/// A TCP or UDP packet's source (`src`) or destination address and port, from `old_ip`
/// and `old_port` to `new`'s: both checksums follow. The old address and port are read
/// through their references at each use, not held across the helper calls: `fast::past_ni_veth`'s
/// frame is counted with the from-app program's under 6.1's 512 bytes, and a value read
/// again needs no stack slot.
#[inline(always)]
fn tcp_udp(ctx: &TcContext, proto: u8, l4_off: u16, src: bool, old_ip: &[u8; 4], old_port: &u16, new: &NatValue) -> Result<(), ()> {
    let l4 = l4_off as usize & L4_OFF_MASK;
    let (l4_sum, extra) = if proto == PROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, BPF_F_MARK_MANGLED_0 as u64) };
    let (ip_off, port_off) = if src { (IP_SRC, l4) } else { (IP_DST, l4 + 2) };
    // The pseudo header holds the addresses: their change goes into the L4 sum.
    ctx.l4_csum_replace(l4_sum, ip_raw(old_ip), ip_raw(&new.addr), BPF_F_PSEUDO_HDR as u64 | extra | 4).map_err(|_| ())?;
    if *old_port != new.port {
        ctx.l4_csum_replace(l4_sum, port_raw(*old_port), port_raw(new.port), extra | 2).map_err(|_| ())?;
        write(ctx, port_off, &new.port.to_be_bytes())?;
    }
    ip_address(ctx, ip_off, old_ip, &new.addr)
}

/// Where DCCP's and UDP-Lite's checksum sits in their header (as UDP's).
const PSEUDO_SUM_OFF: usize = 6;

/// For a protocol without ports of ours whose checksum covers the pseudo header (DCCP,
/// UDP-Lite): the checksum helper's flags for an address change; None: no such sum.
/// UDP-Lite sends a sum that comes to 0 as all ones, as UDP does (RFC 3828); DCCP sends
/// it as it is.
#[inline(always)]
fn pseudo_header_sum_flags(proto: u8) -> Option<u64> {
    match proto {
        PROTO_UDPLITE => Some(BPF_F_PSEUDO_HDR as u64 | BPF_F_MARK_MANGLED_0 as u64),
        PROTO_DCCP => Some(BPF_F_PSEUDO_HDR as u64),
        _ => None,
    }
}

/// The IPv4 address at `ip_off` (source or destination), from `old` to `new`, and the
/// header's checksum with it.
#[inline(always)]
fn ip_address(ctx: &TcContext, ip_off: usize, old: &[u8; 4], new: &[u8; 4]) -> Result<(), ()> {
    let sum: [u8; 2] = Skb(ctx).read(IP_CSUM).ok_or(())?;
    write(ctx, IP_CSUM, &csum::replace(sum, old, new))?;
    write(ctx, ip_off, new)
}

/// An address as the checksum helpers take it (the bytes as they are on the wire).
#[inline(always)]
fn ip_raw(a: &[u8; 4]) -> u64 {
    u32::from_ne_bytes(*a) as u64
}

/// A port (host order) as the checksum helpers take it.
#[inline(always)]
fn port_raw(p: u16) -> u64 {
    u16::from_ne_bytes(p.to_be_bytes()) as u64
}

/// Translates an ICMP error about a translated flow, as Linux NAT does: the outer address
/// that named the translated endpoint and the quoted packet's matching address and port.
/// `v` is the entry for the quoted tuple's reverse: a destination rewrite (on ingress)
/// restores the quoted source and the outer destination; a source rewrite (on egress)
/// the quoted destination and the outer source.
#[inline(always)]
pub fn apply_icmp_error(ctx: &TcContext, quoted: &Flow, v: &NatValue) -> Result<(), ()> {
    let quoted_src = v.rewrite != REWRITE_SRC;
    let (outer_off, quoted_ip_off) =
        if quoted_src { (IP_DST, quoted.inner_l3_off as usize + 12) } else { (IP_SRC, quoted.inner_l3_off as usize + 16) };
    let old_outer: [u8; 4] = ctx.load(outer_off).map_err(|_| ())?;
    let old_quoted = if quoted_src { quoted.src } else { quoted.dst };
    let old_port = if quoted_src { quoted.sport } else { quoted.dport };
    let new_ip_raw = u32::from_ne_bytes(v.addr) as u64;

    ctx.l3_csum_replace(IP_CSUM, u32::from_ne_bytes(old_outer) as u64, new_ip_raw, 4).map_err(|_| ())?;
    ctx.store(outer_off, &v.addr, 0).map_err(|_| ())?;
    // The quoted header's address and checksum change by opposite amounts, so the ICMP
    // checksum over them stays right; only the quoted port needs it fixed.
    ctx.l3_csum_replace(quoted.inner_l3_off as usize + 10, u32::from_ne_bytes(old_quoted) as u64, new_ip_raw, 4).map_err(|_| ())?;
    ctx.store(quoted_ip_off, &v.addr, 0).map_err(|_| ())?;
    if old_port != v.port {
        let port_off = match quoted.proto {
            PROTO_TCP | PROTO_UDP if quoted_src => quoted.inner_l4_off as usize,
            PROTO_TCP | PROTO_UDP => quoted.inner_l4_off as usize + 2,
            PROTO_ICMP => quoted.inner_l4_off as usize + 4,
            _ => return Ok(()),
        };
        ctx.l4_csum_replace(quoted.l4_off as usize + 2, port_raw(old_port), port_raw(v.port), 2).map_err(|_| ())?;
        ctx.store(port_off, &v.port.to_be_bytes(), 0).map_err(|_| ())?;
    }
    Ok(())
}
