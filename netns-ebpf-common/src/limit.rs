//! Rate limits of `limit` ACEs: one token bucket per ACE, shared by every flow the ACE
//! matched, charged per packet in both directions.
//!
//! Integer arithmetic in "token-nanoseconds": a packet costs `unit_ns` (1 s, 1 min or 1 h
//! in ns), the bucket refills at `rate` per elapsed ns and holds at most `burst * unit_ns`.

/// Key: the app port whose ACE it is, and the ACE's index in that port's ACL.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub zone: u32,
    pub ifindex: u32,
    pub ace_index: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Packets per unit.
    pub rate: u64,
    pub burst: u64,
    pub unit_ns: u64,
    /// burst * unit_ns, computed on the host (BPF has no 128-bit multiply to check it).
    pub cap: u64,
    pub tokens: u64,
    pub last_ns: u64,
    pub passed: u64,
    pub dropped: u64,
}

impl Bucket {
    /// `rate` and `burst` must not exceed `MAX_RATE` / `MAX_BURST` (the config checks).
    pub fn new(rate: u64, burst: u64, unit_ns: u64) -> Bucket {
        let cap = burst.saturating_mul(unit_ns);
        // Starts full: the first `burst` packets pass at once.
        Bucket { rate, burst, unit_ns, cap, tokens: cap, last_ns: 0, passed: 0, dropped: 0 }
    }
}

/// Refills `b` for the time since its last packet and charges one packet; false: over
/// the limit (the packet is dropped). Counts either way.
#[inline(always)]
pub fn take(b: &mut Bucket, now_ns: u64) -> bool {
    let cap = b.cap;
    if b.last_ns != 0 && now_ns > b.last_ns {
        let elapsed = now_ns - b.last_ns;
        // Cap the elapsed time at what fills the bucket: then elapsed * rate <= cap + rate,
        // which the bounds on rate and burst keep far from overflowing.
        let fill_time = cap.checked_div(b.rate).map_or(0, |t| t + 1);
        let elapsed = if elapsed > fill_time { fill_time } else { elapsed };
        let refill = elapsed.wrapping_mul(b.rate);
        b.tokens = b.tokens.saturating_add(refill).min(cap);
    }
    b.last_ns = now_ns;
    if b.tokens >= b.unit_ns {
        b.tokens -= b.unit_ns;
        b.passed += 1;
        true
    } else {
        b.dropped += 1;
        false
    }
}

/// LIMIT_V1's size: one bucket per `limit` ACE of every app interface.
pub const LIMIT_MAX_ENTRIES: u32 = 4096;
pub const MAX_RATE: u64 = 1_000_000;
pub const MAX_BURST: u64 = 1_000_000;

pub const UNIT_SECOND_NS: u64 = 1_000_000_000;
pub const UNIT_MINUTE_NS: u64 = 60 * UNIT_SECOND_NS;
pub const UNIT_HOUR_NS: u64 = 3600 * UNIT_SECOND_NS;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn burst_then_rate() {
        // The seed's app6: 5/s, bursts of 15.
        let mut b = Bucket::new(5, 15, UNIT_SECOND_NS);
        let t0 = 1_000 * MS;
        let passed = (0..40).filter(|i| take(&mut b, t0 + i * MS)).count();
        assert_eq!(passed, 15, "a 40 ms burst of 40 gets the 15 of the bucket");
        // One second later 5 more tokens, not more.
        let passed = (0..40).filter(|i| take(&mut b, t0 + 1_040 * MS + i * MS)).count();
        assert_eq!(passed, 5);
        assert_eq!((b.passed, b.dropped), (20, 60));
    }

    #[test]
    fn steady_rate_passes_and_idle_refills_to_burst_only() {
        let mut b = Bucket::new(5, 15, UNIT_SECOND_NS);
        let t0 = 10 * UNIT_SECOND_NS;
        // 5 per second, evenly spaced, always pass.
        for i in 0..50 {
            assert!(take(&mut b, t0 + i * 200 * MS), "packet {i}");
        }
        // A long idle fills the bucket to its burst, not beyond.
        let later = t0 + 3_600 * UNIT_SECOND_NS;
        let passed = (0..100).filter(|i| take(&mut b, later + i)).count();
        assert_eq!(passed, 15);
    }

    #[test]
    fn per_minute_and_huge_values_do_not_overflow() {
        let mut b = Bucket::new(2, 1, UNIT_MINUTE_NS);
        assert!(take(&mut b, 1));
        assert!(!take(&mut b, 2));
        assert!(take(&mut b, 2 + 30 * UNIT_SECOND_NS), "2 per minute: one token every 30 s");
        let mut big = Bucket::new(MAX_RATE, MAX_BURST, UNIT_HOUR_NS);
        assert!(take(&mut big, 1));
        assert!(take(&mut big, u64::MAX), "a clock far ahead refills without overflow");
        assert_eq!(big.tokens, big.cap - UNIT_HOUR_NS);
    }
}
