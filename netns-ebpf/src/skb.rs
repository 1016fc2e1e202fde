//! What the programs read from the socket buffer (the packet through `PacketReader`,
//! its interface and mark) and the one thing every one of them writes: a stat counter.

use aya_ebpf::programs::TcContext;
use netns_ebpf_common::{packet::PacketReader, Stat};

use crate::maps::STATS;

pub struct Skb<'a>(pub &'a TcContext);

impl PacketReader for Skb<'_> {
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
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
