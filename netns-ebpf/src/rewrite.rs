//! In-place header rewrites with incremental checksum fixes (kernel helpers).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netns_ebpf_common::{
    nat::{NatKey, NatValue, REWRITE_SRC},
    packet::{Flow, ETH_HLEN, FRAG_LATER},
    PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

/// Applies `v` (new source or destination address and port) to the packet and to `flow`.
// The ICMP arm keeps the shape of the TCP/UDP one (a port that changes is rewritten).
#[allow(clippy::collapsible_match)]
#[inline(always)]
pub fn apply(ctx: &TcContext, flow: &mut Flow, v: &NatValue) -> Result<(), ()> {
    let src = v.rewrite == REWRITE_SRC;
    let (old_ip, ip_off) = if src { (flow.src, IP_SRC) } else { (flow.dst, IP_DST) };
    let old_port = if src { flow.sport } else { flow.dport };
    let l4 = flow.l4_off as usize;
    let old_ip_raw = u32::from_ne_bytes(old_ip) as u64;
    let new_ip_raw = u32::from_ne_bytes(v.addr) as u64;
    let old_port_raw = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
    let new_port_raw = u16::from_ne_bytes(v.port.to_be_bytes()) as u64;

    // A later fragment carries no L4 header: its ports and L4 checksum were in the
    // first fragment, rewritten there; only its addresses change.
    let l4_proto = if flow.frag == FRAG_LATER { 0 } else { flow.proto };
    match l4_proto {
        PROTO_TCP | PROTO_UDP => {
            let (csum, extra) = if flow.proto == PROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, BPF_F_MARK_MANGLED_0 as u64) };
            let port_off = if src { l4 } else { l4 + 2 };
            // The pseudo header holds the addresses: their change goes into the L4 sum.
            ctx.l4_csum_replace(csum, old_ip_raw, new_ip_raw, BPF_F_PSEUDO_HDR as u64 | extra | 4).map_err(|_| ())?;
            if old_port != v.port {
                ctx.l4_csum_replace(csum, old_port_raw, new_port_raw, extra | 2).map_err(|_| ())?;
                ctx.store(port_off, &v.port.to_be_bytes(), 0).map_err(|_| ())?;
            }
        }
        PROTO_ICMP if flow.icmp_echo => {
            // The echo identifier plays the port; no pseudo header in ICMP's sum.
            if old_port != v.port {
                ctx.l4_csum_replace(l4 + 2, old_port_raw, new_port_raw, 2).map_err(|_| ())?;
                ctx.store(l4 + 4, &v.port.to_be_bytes(), 0).map_err(|_| ())?;
            }
        }
        _ => {}
    }
    ctx.l3_csum_replace(IP_CSUM, old_ip_raw, new_ip_raw, 4).map_err(|_| ())?;
    ctx.store(ip_off, &v.addr, 0).map_err(|_| ())?;

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

/// `apply` for one case, the fast path's (`fast::past_ni_veth`): a TCP or UDP packet's
/// source, from `old` (the packet's NAT key) to `new`, read through the two references
/// at each use. Its caller's frame is counted with the from-app program's under 6.1's
/// 512 bytes, and values read again after each helper call need no stack slots, where
/// `apply`'s locals spill. The packet's `Flow` is left as it was (its caller is done with it).
#[inline(always)]
pub fn tcp_udp_source(ctx: &TcContext, l4_off: u16, old: &NatKey, new: &NatValue) -> Result<(), ()> {
    let l4 = l4_off as usize;
    let (csum, extra) = if old.proto == PROTO_TCP { (l4 + 16, 0) } else { (l4 + 6, BPF_F_MARK_MANGLED_0 as u64) };
    let ip = |a: &[u8; 4]| u32::from_ne_bytes(*a) as u64;
    let port = |p: u16| u16::from_ne_bytes(p.to_be_bytes()) as u64;
    ctx.l4_csum_replace(csum, ip(&old.src), ip(&new.addr), BPF_F_PSEUDO_HDR as u64 | extra | 4).map_err(|_| ())?;
    if old.sport != new.port {
        ctx.l4_csum_replace(csum, port(old.sport), port(new.port), extra | 2).map_err(|_| ())?;
        ctx.store(l4, &new.port.to_be_bytes(), 0).map_err(|_| ())?;
    }
    ctx.l3_csum_replace(IP_CSUM, ip(&old.src), ip(&new.addr), 4).map_err(|_| ())?;
    ctx.store(IP_SRC, &new.addr, 0).map_err(|_| ())
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
        let old_raw = u16::from_ne_bytes(old_port.to_be_bytes()) as u64;
        let new_raw = u16::from_ne_bytes(v.port.to_be_bytes()) as u64;
        ctx.l4_csum_replace(quoted.l4_off as usize + 2, old_raw, new_raw, 2).map_err(|_| ())?;
        ctx.store(port_off, &v.port.to_be_bytes(), 0).map_err(|_| ())?;
    }
    Ok(())
}
