//! The Internet checksum's incremental update (RFC 1624, eqn. 3) for header fields the
//! programs rewrite in place: the IPv4 header's own checksum, which is always a whole,
//! computed sum. (The TCP and UDP sums are not: a packet the kernel has yet to finish
//! (`CHECKSUM_PARTIAL`) holds only its pseudo header's sum there, and only the kernel's
//! helpers know which kind a packet is, so those stay with `bpf_l4_csum_replace`.)
//! One helper call less per field, for the fast path's hops (the TTL) and each
//! translation (the address).

/// The checksum `sum` (as it stands in the header) once the bytes `old` that it covers
/// become `new`: `~(~sum + ~old + new)` over 16-bit words, big-endian as on the wire.
/// `N` is even (whole words), at most 16 (the folds below cover that many).
#[inline(always)]
pub fn replace<const N: usize>(sum: [u8; 2], old: &[u8; N], new: &[u8; N]) -> [u8; 2] {
    let mut acc = u32::from(!u16::from_be_bytes(sum));
    let mut i = 0;
    while i + 1 < N {
        acc += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        acc += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    // At most 1 + 2 * 8 words of 0xffff: two folds bring it under 0x10000.
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (!(acc as u16)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IPv4 header checksum computed whole (what a receiver checks).
    fn whole(header: &[u8; 20]) -> [u8; 2] {
        let mut h = *header;
        h[10] = 0;
        h[11] = 0;
        let mut acc: u32 = h.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        (!(acc as u16)).to_be_bytes()
    }

    fn header(ttl: u8, src: [u8; 4], dst: [u8; 4], id: u16) -> [u8; 20] {
        let mut h = [0x45, 0, 0, 60, 0, 0, 0x40, 0, ttl, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        h[4..6].copy_from_slice(&id.to_be_bytes());
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let sum = whole(&h);
        h[10..12].copy_from_slice(&sum);
        h
    }

    /// A cheap deterministic stream of test values (xorshift).
    fn values(mut x: u32) -> impl Iterator<Item = u32> {
        core::iter::repeat_with(move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        })
    }

    #[test]
    fn a_changed_address_gives_the_sum_a_whole_recount_gives() {
        let mut v = values(0x1234_5678);
        for _ in 0..10_000 {
            let (a, b, c) = (v.next().unwrap().to_be_bytes(), v.next().unwrap().to_be_bytes(), v.next().unwrap().to_be_bytes());
            let h = header(64, a, b, v.next().unwrap() as u16);
            let mut changed = h;
            changed[12..16].copy_from_slice(&c);
            let sum = replace([h[10], h[11]], &a, &c);
            assert_eq!(sum, whole(&changed), "src {a:?} -> {c:?} in {h:?}");
        }
    }

    #[test]
    fn a_routing_hop_gives_the_sum_a_whole_recount_gives() {
        let mut v = values(0x9e37_79b9);
        for ttl in 2..=255u8 {
            for _ in 0..50 {
                let h = header(ttl, v.next().unwrap().to_be_bytes(), v.next().unwrap().to_be_bytes(), v.next().unwrap() as u16);
                let mut changed = h;
                changed[8] = ttl - 1;
                let sum = replace([h[10], h[11]], &[ttl, 6], &[ttl - 1, 6]);
                assert_eq!(sum, whole(&changed), "TTL {ttl} in {h:?}");
            }
        }
    }

    #[test]
    fn the_extremes_of_the_sum_fold_right() {
        // Headers whose sums are 0x0000 and 0xffff before or after (RFC 1624's corner:
        // eqn. 3 never yields the -0 an older formula gave).
        for (old, new) in [([0u8, 0], [0xff, 0xff]), ([0xff, 0xff], [0, 0]), ([0x12, 0x34], [0x12, 0x34])] {
            for sum in [[0u8, 0], [0xff, 0xff], [0x80, 0x00], [0x00, 0x01]] {
                let got = replace(sum, &old, &new);
                // Check against the definition: the words covered, the sum and the new
                // sum add up to the same total before and after (mod 0xffff).
                let total = |s: [u8; 2], w: [u8; 2]| -> u32 {
                    let mut acc = u32::from(u16::from_be_bytes(s)) + u32::from(u16::from_be_bytes(w));
                    while acc >> 16 != 0 {
                        acc = (acc & 0xffff) + (acc >> 16);
                    }
                    acc % 0xffff
                };
                assert_eq!(total(sum, old), total(got, new), "sum {sum:?}: {old:?} -> {new:?} gave {got:?}");
            }
        }
    }
}
