//! Which chunks can hold a flow's deciding ACE, for an ACL of more than one chunk: a
//! summary per field over the whole ACL, so that the search visits only those chunks.
//!
//! Without it, a flow that the ACL's last ACE decides (an ACL of drops, then "allow the
//! rest") made the search visit all 20 chunks of a 10,000-ACE ACL, each with its three
//! bitmaps: ~100 map lookups per new flow, against ~5 for a one-chunk ACL. With it, the
//! search makes two lookups per field, ANDs the three masks, and visits only the chunks
//! left, in order (for that ACL, one).
//!
//! A field's summary is a range table like a chunk's ([`super::range`]), with a mask of
//! chunks per range where a chunk's table has a bitmap: bit c is set where chunk c has
//! an ACE that the range's values satisfy. The fields are the remote address, the remote
//! port and, as one value ([`proto_value`]), the protocol with whether the remote is in
//! the NI's eidset. A mask bit says only that the chunk may decide: the chunk's own
//! bitmaps, ANDed, say whether it does. A mask of 4 bytes instead of a 64-byte bitmap
//! makes pages of [`SUMMARY_SLOTS`] ranges, and two levels hold the 20,481 ranges that
//! 10,240 ACEs on distinct addresses cut.

use super::{range::last_at_most, AceQuery, AclMaps};

/// The summary field of the protocol with whether the remote is in the eidset
/// ([`proto_value`]); the address and port use `FIELD_IP` and `FIELD_PORT`.
pub const FIELD_PROTO_EIDSET: u8 = 2;
/// Ranges per page: a power of two (the search halves a whole number of times), and the
/// page (3,080 bytes) with the hash map's header and key within a 4 KiB allocation.
pub const SUMMARY_SLOTS: usize = 256;

/// Page `page` of the summary of field `field` of ACL `acl` (0: the root).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SummaryKey {
    pub acl: u32,
    pub field: u8,
    pub _pad: u8,
    pub page: u16,
}

/// A page of a summary: slot i is the range of values from `keys[i]` to the next key.
/// In a leaf, `values[i]` is the range's mask of chunks; in the root (page 0), the page
/// number of the leaf that starts at `keys[i]`.
///
/// A summary is a root and leaves even where one page would hold it: a lookup that took
/// one page or two would be two paths, each of which the verifier follows on through
/// the rest of the search.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryPage {
    /// In the root, how many leaves there are; 0 in a leaf.
    pub leaves: u32,
    pub _pad: u32,
    /// Ascending; slot 0's is 0 in the root and the first leaf; unused: `RANGE_END`,
    /// above every value (u64: see `last_at_most`).
    pub keys: [u64; SUMMARY_SLOTS],
    pub values: [u32; SUMMARY_SLOTS],
}

impl SummaryPage {
    /// The value of the slot whose range holds `value`.
    #[inline(always)]
    pub fn value_at(&self, value: u32) -> u32 {
        // The mask is a no-op (the slot is below SUMMARY_SLOTS) that shows the verifier
        // the bound.
        self.values[last_at_most(&self.keys, value) & (SUMMARY_SLOTS - 1)]
    }
}

/// What `proto_value` adds to the protocol for a remote in the eidset.
pub const IN_EIDSET: u32 = 256;

/// The value a flow has in the summary of `FIELD_PROTO_EIDSET`: its protocol, and
/// `IN_EIDSET` more for a remote in the eidset.
#[inline(always)]
pub fn proto_value(q: &AceQuery) -> u32 {
    q.facts.in_eidset as u32 * IN_EIDSET + q.proto as u32
}

/// The mask of chunks the summary of field `field` gives `value`.
#[inline(always)]
pub fn field_chunks(maps: &impl AclMaps, acl: u32, field: u8, value: u32) -> Option<u32> {
    let key = |page: u16| SummaryKey { acl, field, _pad: 0, page };
    let root = maps.summary_page(&key(0))?;
    let leaf = maps.summary_page(&key(root.value_at(value) as u16))?;
    Some(leaf.value_at(value))
}

/// The chunks whose bitmaps the search must read for flow `q`: bit c for chunk c. Every
/// chunk where a page is missing (an ACL without a summary: `AclShape::summarized`): a
/// summary only narrows the search, its answer never depends on one.
#[inline(always)]
pub fn candidate_chunks(maps: &impl AclMaps, acl: u32, q: &AceQuery) -> u32 {
    let ip = field_chunks(maps, acl, super::FIELD_IP, u32::from_be_bytes(q.remote));
    let port = field_chunks(maps, acl, super::FIELD_PORT, q.remote_port as u32);
    let proto = field_chunks(maps, acl, FIELD_PROTO_EIDSET, proto_value(q));
    match (ip, port, proto) {
        (Some(ip), Some(port), Some(proto)) => ip & port & proto,
        _ => u32::MAX,
    }
}

#[cfg(any(test, feature = "user"))]
pub use build::{merge, pages};

#[cfg(any(test, feature = "user"))]
mod build {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::classify::{range::RANGE_END, Bits};

    /// The summary of one field over its chunks' range tables (`tables[c]`: chunk c's,
    /// each starting at 0): (first value, mask of the chunks whose bitmap there has an
    /// ACE), ascending, neighbours with the same mask merged.
    pub fn merge(tables: &[&[(u32, Bits)]]) -> Vec<(u32, u32)> {
        // Where a chunk's bitmap turns empty or not: a sweep over the tables' starts, in
        // one sorted vector (a swap of 10,000 ACEs merges ~20,000 of them per field).
        let mut edges: Vec<(u32, usize, bool)> = tables
            .iter()
            .enumerate()
            .flat_map(|(chunk, table)| table.iter().map(move |(first, bits)| (*first, chunk, *bits != Bits::default())))
            .collect();
        edges.sort_unstable_by_key(|&(first, chunk, _)| (first, chunk));
        let mut out: Vec<(u32, u32)> = Vec::new();
        let mut mask = 0u32;
        for (i, &(at, chunk, some)) in edges.iter().enumerate() {
            if some {
                mask |= 1 << chunk;
            } else {
                mask &= !(1 << chunk);
            }
            // The last change at this value: the range from here has its mask.
            let last_here = edges.get(i + 1).is_none_or(|&(next, _, _)| next != at);
            if last_here && out.last().is_none_or(|&(_, m)| m != mask) {
                out.push((at, mask));
            }
        }
        out
    }

    /// The pages of the summary (`acl`, `field`) holding `ranges` (`merge`'s).
    pub fn pages(acl: u32, field: u8, ranges: &[(u32, u32)]) -> Vec<(SummaryKey, SummaryPage)> {
        let key = |page: usize| SummaryKey { acl, field, _pad: 0, page: page as u16 };
        let page_of = |leaves: usize, slots: &mut dyn Iterator<Item = (u32, u32)>| {
            let mut page = SummaryPage { leaves: leaves as u32, _pad: 0, keys: [RANGE_END; SUMMARY_SLOTS], values: [0; SUMMARY_SLOTS] };
            for (slot, (first, value)) in slots.enumerate() {
                page.keys[slot] = first as u64;
                page.values[slot] = value;
            }
            page
        };
        let leaves: Vec<&[(u32, u32)]> = ranges.chunks(SUMMARY_SLOTS).collect();
        assert!(leaves.len() <= SUMMARY_SLOTS, "{} ranges: over what two levels hold", ranges.len());
        let mut out =
            Vec::from([(key(0), page_of(leaves.len(), &mut leaves.iter().enumerate().map(|(j, part)| (part[0].0, j as u32 + 1))))]);
        out.extend(leaves.iter().enumerate().map(|(j, part)| (key(j + 1), page_of(0, &mut part.iter().copied()))));
        out
    }
}
