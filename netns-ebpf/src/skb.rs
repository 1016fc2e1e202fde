//! What the programs read from the socket buffer (the packet through `PacketReader`,
//! its interface and mark), how they write header bytes (`write`), and the one thing
//! every one of them writes: a stat counter.

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

    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }
}

/// Whether the frame belongs to a VLAN: an 802.1Q tag with a VLAN id. The kernel takes a
/// tag out of the frame's bytes (into the socket buffer, as a NIC's VLAN offload would)
/// before tc sees it: the bytes then read as a plain IPv4 packet, so the tag is asked for
/// here. A priority tag (802.1p, VLAN id 0) is the untagged network's: the kernel strips
/// it after tc, and LANs that tag priorities are common.
#[inline(always)]
pub fn vlan_tagged(ctx: &TcContext) -> bool {
    let skb = unsafe { &*ctx.skb.skb };
    skb.vlan_present != 0 && skb.vlan_tci & VLAN_VID_MASK != 0
}

/// The VLAN id's bits of a tag's TCI.
const VLAN_VID_MASK: u32 = 0x0fff;

/// Writes `bytes` at `offset` of the packet: straight into its linear data when they are
/// there (direct packet access; the verifier then starts the program by making a cloned
/// packet's data its own, as `bpf_skb_store_bytes` would for each write), else through
/// that helper. No checksum follows: the caller fixes the sums the bytes are under
/// (`netns_ebpf_common::csum`, `bpf_l4_csum_replace`). The helper call was most of the
/// cost of a hop's MACs and TTL. (The verifier allows a write at a variable offset only
/// when it knows a small bound for it: the headers we write end well before
/// `DIRECT_WRITE_END`, and the check tells it so.)
#[inline(always)]
pub fn write<const N: usize>(ctx: &TcContext, offset: usize, bytes: &[u8; N]) -> Result<(), ()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if offset + N <= DIRECT_WRITE_END && start + offset + N <= end {
        unsafe { core::ptr::write_unaligned((start + offset) as *mut [u8; N], *bytes) };
        return Ok(());
    }
    ctx.store(offset, bytes, 0).map_err(|_| ())
}

/// Where direct writes end: past the Ethernet header, the longest IPv4 header and the
/// TCP header's checksum.
const DIRECT_WRITE_END: usize = 128;

#[inline(always)]
pub fn count(stat: Stat) {
    count_n(stat, 1);
}

/// Counts `n` at once: one lookup where a packet counts for `n` (a reply translated
/// back through two translations in one rewrite).
#[inline(always)]
pub fn count_n(stat: Stat, n: u64) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other writer.
        unsafe { *slot += n };
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
