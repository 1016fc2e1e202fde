//! IPv4 fragments. Only a datagram's first fragment carries its ports; the later ones
//! carry the addresses, the protocol and the identification. Every program that sees a
//! first fragment records its ports under that key, so the later fragments take the
//! same conntrack verdict and the same translation (addresses only: the ports they lack
//! were rewritten in the first). A later fragment whose first was not seen (lost, out of
//! order, too old) is dropped and counted: it is never judged or translated on its own.

use crate::{packet::Flow, Ipv4};

/// Datagrams in reassembly at once, per agent (LRU).
pub const FRAG_MAX_ENTRIES: u32 = 8192;
/// How long a first fragment's record serves its later ones: the kernel's
/// `ipfrag_time` (30 s).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// The zone (NAT domain) of the program that saw it: addresses repeat across NIs.
    pub zone: u32,
    pub src: Ipv4,
    pub dst: Ipv4,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl FragKey {
    #[inline(always)]
    pub fn of(zone: u32, flow: &Flow) -> FragKey {
        FragKey { zone, src: flow.src, dst: flow.dst, id: flow.ip_id, proto: flow.proto, _pad: 0 }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    pub seen_ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub icmp_echo: u8,
    pub _pad: [u8; 3],
}

impl FragValue {
    /// What the first fragment `flow` tells its later ones.
    #[inline(always)]
    pub fn of(flow: &Flow, now_ns: u64) -> FragValue {
        FragValue { seen_ns: now_ns, sport: flow.sport, dport: flow.dport, icmp_echo: flow.icmp_echo as u8, _pad: [0; 3] }
    }

    /// Gives a later fragment its datagram's ports; false when the record is too old to
    /// be this datagram's.
    #[inline(always)]
    pub fn fill(&self, flow: &mut Flow, now_ns: u64) -> bool {
        if now_ns.saturating_sub(self.seen_ns) > FRAG_TIMEOUT_NS {
            return false;
        }
        flow.sport = self.sport;
        flow.dport = self.dport;
        flow.icmp_echo = self.icmp_echo != 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{packet::FRAG_LATER, PROTO_UDP};

    #[test]
    fn later_fragments_take_the_first_ones_ports() {
        let first = Flow { proto: PROTO_UDP, src: [10, 0, 0, 2], dst: [10, 0, 0, 9], sport: 4000, dport: 53, ip_id: 7, ..Flow::default() };
        let record = FragValue::of(&first, 100);
        let mut later = Flow { sport: 0, dport: 0, frag: FRAG_LATER, ..first };
        assert_eq!(FragKey::of(3, &later), FragKey::of(3, &first));
        assert_ne!(FragKey::of(3, &first), FragKey::of(4, &first), "zones apart");
        assert!(record.fill(&mut later, 100 + FRAG_TIMEOUT_NS));
        assert_eq!((later.sport, later.dport), (4000, 53));
        let mut stale = Flow { sport: 0, ..later };
        assert!(!record.fill(&mut stale, 101 + FRAG_TIMEOUT_NS));
        assert_eq!(stale.sport, 0);
    }
}
