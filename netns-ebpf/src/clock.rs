//! The programs' one clock.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// CLOCK_MONOTONIC_COARSE in ns: what every timestamp and timeout in the maps is measured
/// on. The coarse clock (Linux 5.11+) is the tick's time, read from memory; the fine one
/// read the TSC on every call, and a packet's programs called it several times (a few
/// percent of their whole cost). Its tick's precision is plenty for timeouts of seconds
/// and for token buckets (which refill by the tick); the agent's clock (CLOCK_MONOTONIC)
/// runs up to a tick ahead of it (`nat::CLOCK_SLACK_NS`).
#[inline(always)]
pub fn now_ns() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}
