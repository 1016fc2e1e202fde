//! Ethernet/IPv4 frames built byte by byte for the program tests (BPF_PROG_TEST_RUN), and
//! their checksums recomputed from scratch to check the programs' incremental updates.

use std::net::Ipv4Addr;

pub const ETH_LEN: usize = 14;
pub const IP_LEN: usize = 20;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// One end of a frame: MAC, address, port.
#[derive(Clone, Copy, Debug)]
pub struct End {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// An Ethernet frame carrying an IPv4 TCP segment (flags as given, no options) or UDP
/// datagram with `payload`; every checksum right.
pub fn ipv4(proto: u8, src: End, dst: End, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
    let mut f = Vec::with_capacity(ETH_LEN + IP_LEN + l4_len);
    f.extend_from_slice(&dst.mac);
    f.extend_from_slice(&src.mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (IP_LEN + l4_len) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&src.ip.octets());
    f.extend_from_slice(&dst.ip.octets());
    f.extend_from_slice(&src.port.to_be_bytes());
    f.extend_from_slice(&dst.port.to_be_bytes());
    if proto == PROTO_TCP {
        f.extend_from_slice(&1000u32.to_be_bytes());
        f.extend_from_slice(&(if tcp_flags & TCP_ACK != 0 { 2000u32 } else { 0 }).to_be_bytes());
        f.extend_from_slice(&[0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(payload);
    set_checksums(&mut f);
    f
}

fn l4_checksum_offset(proto: u8) -> usize {
    ETH_LEN + IP_LEN + if proto == PROTO_TCP { 16 } else { 6 }
}

/// Writes the IPv4 header and TCP/UDP checksums of `f` from scratch.
pub fn set_checksums(f: &mut [u8]) {
    set_ip_checksum(f);
    let at = l4_checksum_offset(f[ETH_LEN + 9]);
    f[at..at + 2].fill(0);
    let l4 = l4_checksum(f);
    f[at..at + 2].copy_from_slice(&l4.to_be_bytes());
}

/// Whether the IPv4 header and TCP/UDP checksums of `f` are right. A UDP checksum of 0
/// ("none") does not count: `ipv4` always writes one, and a rewrite must keep it.
pub fn checksums_ok(f: &[u8]) -> bool {
    let ip_ok = ones_complement(&f[ETH_LEN..ETH_LEN + IP_LEN], 0) == 0;
    let at = l4_checksum_offset(f[ETH_LEN + 9]);
    let stored = u16::from_be_bytes([f[at], f[at + 1]]);
    let udp_none = f[ETH_LEN + 9] == PROTO_UDP && stored == 0;
    ip_ok && !udp_none && l4_checksum(f) == 0
}

/// The L4 checksum over the pseudo header and segment as they stand (0 when right).
fn l4_checksum(f: &[u8]) -> u16 {
    let total = u16::from_be_bytes([f[ETH_LEN + 2], f[ETH_LEN + 3]]) as usize;
    let seg = &f[ETH_LEN + IP_LEN..ETH_LEN + total];
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&f[ETH_LEN + 12..ETH_LEN + 20]);
    pseudo.extend_from_slice(&[0, f[ETH_LEN + 9]]);
    pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let partial = sum16(&pseudo, 0);
    ones_complement(seg, partial)
}

fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    sum
}

fn ones_complement(bytes: &[u8], start: u32) -> u16 {
    let mut sum = sum16(bytes, start);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A fragment of the datagram in frame `f` (as `ipv4` built it): the same bytes, with
/// its offset (`offset_units` of 8 bytes) and more-fragments flag, and the header's
/// checksum written again.
pub fn fragment(f: &[u8], offset_units: u16, more: bool) -> Vec<u8> {
    let mut f = f.to_vec();
    let field = offset_units | if more { 0x2000 } else { 0 };
    f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&field.to_be_bytes());
    set_ip_checksum(&mut f);
    f
}

/// Writes the IPv4 header's checksum of `f` from scratch.
fn set_ip_checksum(f: &mut [u8]) {
    f[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    let ip = ones_complement(&f[ETH_LEN..ETH_LEN + IP_LEN], 0);
    f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip.to_be_bytes());
}

/// Source and destination (address, port) of a frame `ipv4` built.
pub fn ends(f: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let ip = |at: usize| Ipv4Addr::new(f[at], f[at + 1], f[at + 2], f[at + 3]);
    let port = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let l4 = ETH_LEN + IP_LEN;
    ((ip(ETH_LEN + 12), port(l4)), (ip(ETH_LEN + 16), port(l4 + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_right_checksums_and_a_flipped_byte_breaks_them() {
        let a = End { mac: [2, 0, 0, 0, 0, 1], ip: Ipv4Addr::new(10, 0, 0, 1), port: 1234 };
        let b = End { mac: [2, 0, 0, 0, 0, 2], ip: Ipv4Addr::new(10, 0, 0, 2), port: 80 };
        for proto in [PROTO_TCP, PROTO_UDP] {
            let mut f = ipv4(proto, a, b, TCP_SYN, b"hello");
            assert!(checksums_ok(&f));
            assert_eq!(ends(&f), ((a.ip, 1234), (b.ip, 80)));
            let last = f.len() - 1;
            f[last] ^= 1;
            assert!(!checksums_ok(&f));
            f[last] ^= 1;
            let at = l4_checksum_offset(proto);
            f[at..at + 2].fill(0);
            assert!(!checksums_ok(&f), "a zeroed checksum is not right (UDP: not kept)");
        }
    }
}
