//! A field's bitmaps as a sorted table of value ranges: the remote address and the
//! remote port of a chunk's ACEs cut the field's values into ranges, each with the one
//! bitmap of the ACEs that every value in it satisfies. A lookup is a binary search.
//!
//! It replaces an LPM trie entry per address prefix and a hash entry per port: a
//! 10,000-ACE ACL on as many addresses and ports was 20,000 map entries, each costing
//! the agent ~1 µs to write and as much to remove (an allocation, a hash bucket or trie
//! node, a free), which took a swap over 30 ms. As ranges it is a few hundred pages.
//!
//! A table is one page when its ranges fit ([`RANGE_LEAF`]); else a root page whose
//! keys are the first values of its leaf pages, and the leaves (two levels hold 64 x 48
//! ranges; a chunk of 512 ACEs makes at most 1,025: 22 leaves).

use super::{AclMaps, Bits};

/// The field a table is for.
pub const FIELD_IP: u8 = 0;
pub const FIELD_PORT: u8 = 1;

/// Keys a page searches: a power of two, so the search halves a whole number of times.
pub const RANGE_KEYS: usize = 64;
/// Ranges a leaf page holds: what fits with the keys in a 4 KiB allocation (the map's
/// entries are allocated one by one; a page one byte over takes 8 KiB).
pub const RANGE_LEAF: usize = 48;
/// The key of a page's unused slots: above every value (addresses and ports are u32), so
/// the search never ends in one.
pub const RANGE_END: u64 = 1 << 32;

/// Page `page` of the table of chunk `chunk`'s field `field` of ACL `acl` (0: the root).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeKey {
    pub acl: u32,
    pub chunk: u16,
    pub field: u8,
    pub page: u8,
}

/// A page of a range table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RangePage {
    /// 0: a leaf, whose slot i is the range from `keys[i]` to the next key, with the
    /// ACEs `bits[i]`. Else a root over this many leaves: slot j holds the first value of
    /// leaf j (page j + 1).
    pub leaves: u32,
    pub _pad: u32,
    /// Ascending; slot 0's is 0 (every value is in some range); unused: `RANGE_END`.
    pub keys: [u64; RANGE_KEYS],
    pub bits: [Bits; RANGE_LEAF],
}

impl Default for RangePage {
    fn default() -> Self {
        RangePage { leaves: 0, _pad: 0, keys: [RANGE_END; RANGE_KEYS], bits: [Bits::default(); RANGE_LEAF] }
    }
}

impl RangePage {
    /// The last slot whose key is at most `value`.
    #[inline(always)]
    pub fn find(&self, value: u32) -> usize {
        last_at_most(&self.keys, value)
    }
}

/// The last slot of `keys` (ascending, `N` a power of two, slot 0's key at most every
/// value searched) whose key is at most `value`.
///
/// Without a branch: `(value + 2^33 - key) >> 33` is 1 when the key is at most the
/// value (both at most 2^32), else 0. A search that branched would reach its end on `N`
/// paths with as many known slots, each of which the verifier would follow through the
/// rest of the program (and each later search multiplies them); this one is one path,
/// its slot a number the verifier bounds where it is used.
///
/// The keys are u64 even where u32 would hold them: a key the compiler knows is below
/// 2^32 lets it prove the masks below redundant and build the slot with ORs, whose
/// bounds 6.1's verifier loses ("unbounded min value"); a key it cannot bound keeps them.
#[inline(always)]
pub fn last_at_most<const N: usize>(keys: &[u64; N], value: u32) -> usize {
    let biased = value as u64 | 1 << 33;
    let mut slot = 0;
    let mut step = N / 2;
    while step > 0 {
        let key = keys[(slot + step) & (N - 1)];
        slot += step * (biased.wrapping_sub(key) >> 33) as usize;
        step /= 2;
    }
    slot
}

/// The bitmap of the range that holds `value` in the table of chunk `chunk`'s field
/// `field` of ACL `acl`: one page's search, or two.
#[inline(always)]
pub fn range_bits(maps: &impl AclMaps, acl: u32, chunk: u16, field: u8, value: u32) -> Option<&Bits> {
    let key = |page| RangeKey { acl, chunk, field, page };
    let mut page = maps.range_page(&key(0))?;
    if page.leaves != 0 {
        // The root's unused keys are above every value: the slot is a leaf's.
        page = maps.range_page(&key(1 + page.find(value) as u8))?;
    }
    page.bits.get(page.find(value))
}

#[cfg(any(test, feature = "user"))]
pub use build::{pages, ranges, Ranges};

#[cfg(any(test, feature = "user"))]
mod build {
    extern crate std;
    use std::{collections::BTreeMap, vec::Vec};

    use super::*;

    /// The ranges of a field, ascending: (first value, bitmap).
    pub type Ranges = Vec<(u32, Bits)>;

    /// The ranges that `spans` cut: each span (first value, last value, ACE) marks its
    /// ACE in the ranges it covers, `any` is marked in all. Neighbours with the same
    /// bitmap are one range.
    pub fn ranges(spans: &[(u32, u32, usize)], any: Bits) -> Ranges {
        // Where each ACE comes in and goes out (a u64: a span may end at u32::MAX).
        let mut edges: BTreeMap<u64, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
        edges.entry(0).or_default();
        for &(first, last, ace) in spans {
            edges.entry(first as u64).or_default().0.push(ace);
            edges.entry(last as u64 + 1).or_default().1.push(ace);
        }
        let mut out: Ranges = Vec::new();
        let mut live = any;
        for (at, (ins, outs)) in edges.range(..=u32::MAX as u64) {
            // An ACE's spans are disjoint (the protocol's summary gives an ACE two), and
            // an ACE is in `any` only if it has none.
            for ace in outs {
                live.clear(*ace);
            }
            for ace in ins {
                live.set(*ace);
            }
            if out.last().is_none_or(|(_, bits)| *bits != live) {
                out.push((*at as u32, live));
            }
        }
        out
    }

    /// The pages of table (`acl`, `chunk`, `field`) holding `ranges`.
    pub fn pages(acl: u32, chunk: u16, field: u8, ranges: &[(u32, Bits)]) -> Vec<(RangeKey, RangePage)> {
        let key = |page: usize| RangeKey { acl, chunk, field, page: page as u8 };
        let leaf = |part: &[(u32, Bits)]| {
            let mut page = RangePage::default();
            for (slot, (first, bits)) in part.iter().enumerate() {
                page.keys[slot] = *first as u64;
                page.bits[slot] = *bits;
            }
            page
        };
        if ranges.len() <= RANGE_LEAF {
            return Vec::from([(key(0), leaf(ranges))]);
        }
        let leaves: Vec<&[(u32, Bits)]> = ranges.chunks(RANGE_LEAF).collect();
        let mut root = RangePage { leaves: leaves.len() as u32, ..RangePage::default() };
        for (j, part) in leaves.iter().enumerate() {
            root.keys[j] = part[0].0 as u64;
        }
        let mut out = Vec::from([(key(0), root)]);
        out.extend(leaves.iter().enumerate().map(|(j, part)| (key(j + 1), leaf(part))));
        out
    }
}
