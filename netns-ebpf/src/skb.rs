//! What the programs read from the socket buffer (the packet through `PacketReader`,
//! its interface and mark) and the one thing every one of them writes: a stat counter.

use aya_ebpf::programs::TcContext;
use netns_ebpf_common::{packet::PacketReader, Stat};

use crate::maps::STATS;

pub struct Skb<'a>(pub &'a TcContext);

impl PacketReader for Skb<'_> {
    /// From the packet's linear data when the bytes are there (direct packet access: a
    /// bounds check and loads), else through `bpf_skb_load_bytes`, which reads the
    /// fragments too. The helper call and its copy were most of the parsing's cost, and
    /// headers sit in the linear data but for odd drivers. (The verifier accepts the
    /// loads for the check against `data_end`; every `offset` the parser passes is
    /// bounded, an IPv4 header's length at most 60.)
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let (start, end) = (self.0.data(), self.0.data_end());
        if start + offset + N <= end {
            return Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) });
        }
        self.0.load::<[u8; N]>(offset).ok()
    }
}

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).ifindex }
}

#[inline(always)]
pub fn skb_mark(ctx: &TcContext) -> u32 {
    unsafe { (*ctx.skb.skb).mark }
}
