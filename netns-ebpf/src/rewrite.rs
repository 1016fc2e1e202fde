//! In-place header rewrites with incremental checksum fixes (kernel helpers).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use netns_ebpf_common::{
    nat::{NatValue, REWRITE_SRC},
    packet::{Flow, ETH_HLEN},
    PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};

const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SRC: usize = ETH_HLEN + 12;
const IP_DST: usize = ETH_HLEN + 16;

/// Applies `v` (new source or destination address and port) to the packet and to `flow`.
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

    match flow.proto {
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
