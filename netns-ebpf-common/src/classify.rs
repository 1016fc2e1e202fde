//! ACLs flat in size: the first ACE that decides a new flow, found from per-field bitmaps
//! (bpf-iptables' linear bit-vector search) instead of a walk over the ACEs.
//!
//! The agent compiles an ACL ([`compile`]) into bitmaps over its ACEs, in chunks of
//! [`CHUNK_ACES`]: for the chunk and a value of a field (the remote address and the
//! remote port, by the range that holds them: [`range`]; the protocol, with whether the
//! remote is in the eidset), the ACEs of the chunk that the value satisfies. A flow's
//! candidates in a chunk are the AND of its three bitmaps, and the first set bit of the
//! first chunk that has one is the first deciding ACE: a few lookups per 512 ACEs, the
//! same for an ACE at position 1 or 10,000. Two kinds of ACE are not in the bitmaps: port maps (they never decide an app's
//! own flows) and host ACEs, whose match is a DNS answer for this app: the host set's
//! mask names those that resolved to the remote (by ordinal, at most [`MAX_HOST_ACES`]),
//! checked one by one after the bitmaps, and only those before the bitmaps' answer.
//!
//! An ACL of more than one chunk also has a summary per field ([`summary`]): which
//! chunks have an ACE that the value satisfies. The search reads only the chunks all
//! three fields' summaries name: where some field tells the chunks apart, a flow that
//! the last of 10,000 ACEs decides costs a few lookups more than one the first decides,
//! not twenty chunks' worth.
//!
//! Everything an ACL compiles to is keyed by an ACL id: a changed ACL is written under a
//! new id beside the live one and switched in by one update of the port's entry, so a
//! packet sees the old ACL or the new one, never half of one.
//!
//! [`first_decider`] is the whole search over [`AclMaps`]: the programs implement the
//! trait with map lookups, the host (and this module's tests) with the compiled vectors.

pub mod range;
pub mod summary;

pub use range::{range_bits, RangeKey, RangePage, FIELD_IP, FIELD_PORT};
pub use summary::{candidate_chunks, SummaryKey, SummaryPage, FIELD_PROTO_EIDSET};

use crate::acl::{prefix_contains, Ace, AceQuery, ACTION_PORTMAP, MATCH_EIDSET, MATCH_FPORT, MATCH_HOST, MATCH_IP, MATCH_PROTO};

/// ACEs per bitmap chunk: 8 words, one 64-byte map value.
pub const CHUNK_ACES: usize = 512;
pub const CHUNK_WORDS: usize = CHUNK_ACES / 64;
/// ACEs per app interface.
pub const MAX_CLASSIFIED_ACES: usize = 10_240;
pub const MAX_CHUNKS: usize = MAX_CLASSIFIED_ACES / CHUNK_ACES;
// A summary's masks (and the search's candidates) have a bit per chunk in a u32.
const _: () = assert!(MAX_CHUNKS <= 32);
/// Host ACEs per app interface: the host set's mask has a bit for each.
pub const MAX_HOST_ACES: usize = 64;
/// The protocol key of the bitmap for protocols no ACE of the chunk names.
pub const PROTO_ANY: u16 = 256;

/// ACEs the maps hold, over all ports: twice what the config allows live
/// ([`MAX_LIVE_ACES`]), so that any ACL can be written beside the one it replaces.
pub const ACES_MAX_ENTRIES: u32 = 131_072;
pub const MAX_LIVE_ACES: u32 = ACES_MAX_ENTRIES / 2;
/// ACEs per entry of ACE_V4 (`AceGroup`): a map entry costs the agent's write and
/// removal far more than its bytes do, and a swap of 10,000 ACEs wrote and removed one
/// per ACE.
pub const ACES_PER_GROUP: usize = 16;
/// ACE_V4's entries: every live ACE and the ACL replacing it, grouped, plus each port's
/// two ACLs' last, partly used groups.
pub const ACE_GROUPS_MAX_ENTRIES: u32 = ACES_MAX_ENTRIES / ACES_PER_GROUP as u32 + SHAPES_MAX_ENTRIES;
/// Protocol bitmap entries: per chunk at most one per ACE and one for the rest, twice
/// (with and without the eidset's ACEs), over twice the live ACEs and chunks.
pub const BITS_MAX_ENTRIES: u32 = 2 * ACES_MAX_ENTRIES + 8192;
/// Range pages (`range`): a table per chunk and field, of at most 2 ranges per ACE
/// and 1, in one page, or in a root and a leaf per `RANGE_LEAF` ranges.
pub const RANGES_MAX_ENTRIES: u32 = 32_768;
/// The tables of the live ACLs and their replacements: per field, their full chunks and
/// a last one per port (20,235 pages at most: see the assertion).
const RANGE_TABLES: u32 = 2 * 2 * (MAX_LIVE_ACES / CHUNK_ACES as u32 + crate::MAX_APP_PORTS);
const _: () =
    assert!(2 * RANGE_TABLES + (2 * 2 * ACES_MAX_ENTRIES + RANGE_TABLES).div_ceil(range::RANGE_LEAF as u32) <= RANGES_MAX_ENTRIES);
/// Summary pages (`summary`): only ACLs of more than one chunk (more than `CHUNK_ACES`
/// ACEs) have one, each at most three tables of a root and leaves, of at most 2 ranges
/// per ACE and 1 for the address and the port, and 513 for the protocol and eidset.
pub const SUMMARY_MAX_ENTRIES: u32 = 8192;
const SUMMARIZED_ACLS: u32 = ACES_MAX_ENTRIES / (CHUNK_ACES as u32 + 1);
const _: () = assert!(
    SUMMARIZED_ACLS * (3 + 2 + 513u32.div_ceil(summary::SUMMARY_SLOTS as u32))
        + (2 * 2 * ACES_MAX_ENTRIES + 2 * SUMMARIZED_ACLS).div_ceil(summary::SUMMARY_SLOTS as u32)
        <= SUMMARY_MAX_ENTRIES
);
/// ACL ids with a shape: two per port (the live ACL and the one replacing it).
pub const SHAPES_MAX_ENTRIES: u32 = 2 * crate::MAX_APP_PORTS;

/// A chunk's ACEs that a field's value satisfies: bit i of word w is ACE
/// `chunk * CHUNK_ACES + w * 64 + i`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bits {
    pub words: [u64; CHUNK_WORDS],
}

impl Bits {
    /// Marks ACE `i` of the chunk.
    pub fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// Unmarks ACE `i` of the chunk.
    pub fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }
}

/// The protocol's bitmap (`PROTO_ANY`: for a protocol no ACE of the chunk names), for a
/// remote in the NI's eidset or not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoBitsKey {
    pub acl: u32,
    pub chunk: u16,
    pub proto: u16,
    /// 1: the remote is in the eidset. A u32, not a u8 and padding: a 3-byte padding
    /// store compiles to a `memset` call, a subprogram whose frame 6.1 counts.
    pub in_eidset: u32,
}

/// ACE `index` of ACL `acl` (the decided ACE's id and action; a host ACE's fields).
/// With `host`, `index` is a host ACE's ordinal and the value's `id` its ACE index.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AceKey {
    pub acl: u32,
    pub index: u32,
}

/// ACEs `group * ACES_PER_GROUP ..` of an ACL, under `AceKey { acl, index: group }`;
/// those past the ACL's end are zeros.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AceGroup {
    pub aces: [Ace; ACES_PER_GROUP],
}

impl AceGroup {
    /// The group that holds ACE `key.index`, and the ACE's place in it.
    #[inline(always)]
    pub fn locate(key: &AceKey) -> (AceKey, usize) {
        let per = ACES_PER_GROUP as u32;
        (AceKey { acl: key.acl, index: key.index / per }, (key.index % per) as usize)
    }

    /// ACE `at` of the group (`locate`'s place).
    #[inline(always)]
    pub fn get(&self, at: usize) -> Option<&Ace> {
        self.aces.get(at)
    }
}

/// What the search reads; the programs look up their maps, the host its vectors.
pub trait AclMaps {
    /// A page of a field's range table (`range`).
    fn range_page(&self, key: &RangeKey) -> Option<&RangePage>;
    fn proto_bits(&self, key: &ProtoBitsKey) -> Option<&Bits>;
    /// A page of a field's summary (`summary`).
    fn summary_page(&self, key: &SummaryKey) -> Option<&SummaryPage>;
    fn ace(&self, key: &AceKey) -> Option<&Ace>;
    /// The ACE index of the host ACE whose bit in the host set's mask is `key.index`.
    fn host_ace(&self, key: &AceKey) -> Option<u32>;
}

/// An ACL's size, which the search needs: chunks to scan, host ACEs there are; and a
/// digest of its ACEs, by which the agent tells a changed ACL from the live one without
/// reading it back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclShape {
    pub aces: u32,
    /// One past the last host ACE's bit (0: no host ACEs). An ACL's host ACEs take the
    /// bits from a base up, in ACE order (`compile`): the agent gives a changed ACL bits
    /// the live one does not use, so that host sets can hold both ACLs' bits while it
    /// switches (`datapath::HostLayouts`).
    pub host_aces: u32,
    pub digest: u64,
}

/// FNV-1a over the ACEs' fields, in order.
pub fn digest(aces: &[Ace]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for a in aces {
        eat(&a.id.to_le_bytes());
        eat(&a.matches.to_le_bytes());
        eat(&[a.action, a.proto, a.prefix_len]);
        eat(&a.prefix);
        eat(&a.fport.to_le_bytes());
    }
    h
}

impl AclShape {
    /// The first host ACE's bit, the ACL's host ACEs (`host_count`) given.
    pub fn host_base(&self, host_count: u32) -> u32 {
        self.host_aces.saturating_sub(host_count)
    }

    pub fn chunks(&self) -> u32 {
        let chunks = (self.aces as usize).div_ceil(CHUNK_ACES);
        if chunks > MAX_CHUNKS {
            MAX_CHUNKS as u32
        } else {
            chunks as u32
        }
    }

    /// Whether the ACL has a summary (`summary`): where it has chunks to skip.
    #[inline(always)]
    pub fn summarized(&self) -> bool {
        self.chunks() > 1
    }
}

/// Do ACE `ace`'s address, protocol, port and eidset matches hold for the flow? (Its host
/// match is the caller's.)
#[inline(always)]
pub fn fields_match(ace: &Ace, q: &AceQuery) -> bool {
    (ace.matches & MATCH_IP == 0 || prefix_contains(ace.prefix, ace.prefix_len, q.remote))
        && (ace.matches & MATCH_PROTO == 0 || ace.proto == q.proto)
        && (ace.matches & MATCH_FPORT == 0 || ace.fport == q.remote_port)
        && (ace.matches & MATCH_EIDSET == 0 || q.facts.in_eidset)
}

/// The first ACE of chunk `chunk` that the bitmaps say decides the flow: its index.
#[inline(always)]
pub fn chunk_first(maps: &impl AclMaps, acl: u32, chunk: u32, q: &AceQuery) -> Option<u32> {
    let c16 = chunk as u16;
    let ip = range_bits(maps, acl, c16, FIELD_IP, u32::from_be_bytes(q.remote))?;
    // One key, its protocol replaced for the fallback: the step's stack frame is counted
    // with its callers' (512 bytes in all).
    let mut proto_key = ProtoBitsKey { acl, chunk: c16, proto: q.proto as u16, in_eidset: q.facts.in_eidset as u32 };
    let proto = match maps.proto_bits(&proto_key) {
        Some(bits) => bits,
        None => {
            proto_key.proto = PROTO_ANY;
            maps.proto_bits(&proto_key)?
        }
    };
    let port = range_bits(maps, acl, c16, FIELD_PORT, q.remote_port as u32)?;
    let mut w = 0;
    while w < CHUNK_WORDS {
        let bits = ip.words[w] & proto.words[w] & port.words[w];
        if bits != 0 {
            return Some(chunk * CHUNK_ACES as u32 + (w * 64) as u32 + bits.trailing_zeros());
        }
        w += 1;
    }
    None
}

/// What host ACE number `ordinal` says about the flow, the host set's mask given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostStep {
    /// It decides: its ACE index.
    Decides(u32),
    /// Its domain did not resolve to the remote, or its other fields do not match.
    Next,
    /// It comes at or after `before`: no later ordinal can decide.
    Stop,
}

/// One step of the host pass: the host ACE of bit `ordinal`, which decides only before
/// `before` (the bitmaps' answer). A bit below the ACL's base names no host ACE of it
/// (another ACL's, whose bits the host set may hold while the port switches): next.
#[inline(always)]
pub fn host_step(maps: &impl AclMaps, acl: u32, ordinal: u32, q: &AceQuery, before: u32) -> HostStep {
    if ordinal as usize >= MAX_HOST_ACES || q.facts.host_mask & (1u64 << ordinal) == 0 {
        return HostStep::Next;
    }
    let Some(index) = maps.host_ace(&AceKey { acl, index: ordinal }) else { return HostStep::Next };
    if index >= before {
        return HostStep::Stop;
    }
    match maps.ace(&AceKey { acl, index }) {
        Some(ace) if ace.action != ACTION_PORTMAP && fields_match(ace, q) => HostStep::Decides(index),
        _ => HostStep::Next,
    }
}

/// The first host ACE before `before` whose domain resolved to the remote (the host set's
/// mask, by bit) and whose other fields match. An ACL's bits follow its ACEs' order: the
/// first that decides is the first host ACE that does.
#[inline(always)]
pub fn host_first(maps: &impl AclMaps, acl: u32, shape: &AclShape, q: &AceQuery, before: u32) -> Option<u32> {
    let mut ordinal = 0;
    while ordinal < shape.host_aces && (ordinal as usize) < MAX_HOST_ACES {
        match host_step(maps, acl, ordinal, q, before) {
            HostStep::Decides(index) => return Some(index),
            HostStep::Stop => return None,
            HostStep::Next => ordinal += 1,
        }
    }
    None
}

/// The index of the first ACE of ACL `acl` that decides the flow: the same ACE as a walk
/// in order (`reference_first`) finds.
#[inline(always)]
pub fn first_decider(maps: &impl AclMaps, acl: u32, shape: &AclShape, q: &AceQuery) -> Option<u32> {
    let candidates = if shape.summarized() { candidate_chunks(maps, acl, q) } else { u32::MAX };
    let mut found = None;
    let mut chunk = 0;
    while chunk < shape.chunks() {
        if candidates & 1 << chunk != 0 {
            found = chunk_first(maps, acl, chunk, q);
            if found.is_some() {
                break;
            }
        }
        chunk += 1;
    }
    match host_first(maps, acl, shape, q, found.unwrap_or(u32::MAX)) {
        Some(host) => Some(host),
        None => found,
    }
}

/// The walk the bitmaps stand for: ACEs in order, first that decides. A host ACE's bit in
/// the host set's mask is its ordinal among the host ACEs (from `reference_first_at`'s
/// base).
pub fn reference_first(aces: &[Ace], q: &AceQuery) -> Option<u32> {
    reference_first_at(aces, 0, q)
}

/// `reference_first` for an ACL whose host ACEs' bits start at `host_base`.
pub fn reference_first_at(aces: &[Ace], host_base: u32, q: &AceQuery) -> Option<u32> {
    let mut ordinal = host_base as usize;
    for (i, ace) in aces.iter().enumerate() {
        let host_ok = if ace.matches & MATCH_HOST != 0 {
            let ok = ordinal < MAX_HOST_ACES && q.facts.host_mask & (1 << ordinal) != 0;
            ordinal += 1;
            ok
        } else {
            true
        };
        if ace.action != ACTION_PORTMAP && host_ok && fields_match(ace, q) {
            return Some(i as u32);
        }
    }
    None
}

#[cfg(any(test, feature = "user"))]
pub use compile::{compile, host_count, CompiledAcl};

#[cfg(any(test, feature = "user"))]
mod compile {
    extern crate std;
    use std::{collections::BTreeSet, vec::Vec};

    use super::*;

    /// An ACL as map entries, all under one ACL id.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct CompiledAcl {
        pub shape: AclShape,
        /// The pages of the address and port range tables.
        pub ranges: Vec<(RangeKey, RangePage)>,
        pub proto: Vec<(ProtoBitsKey, Bits)>,
        /// The ACEs in groups (`AceGroup`), keyed by group.
        pub aces: Vec<(AceKey, AceGroup)>,
        /// Host ACE ordinal -> ACE index.
        pub hosts: Vec<(AceKey, u32)>,
        /// The pages of the three fields' summaries, where the shape says `summarized`.
        pub summary: Vec<(SummaryKey, SummaryPage)>,
    }

    impl CompiledAcl {
        /// Map entries it takes, its shape's included.
        pub fn entries(&self) -> usize {
            1 + self.ranges.len() + self.proto.len() + self.aces.len() + self.hosts.len() + self.summary.len()
        }
    }

    /// How many host ACEs of `aces` have a bit (at most `MAX_HOST_ACES`).
    pub fn host_count(aces: &[Ace]) -> u32 {
        aces.iter().take(MAX_CLASSIFIED_ACES).filter(|a| a.matches & MATCH_HOST != 0).take(MAX_HOST_ACES).count() as u32
    }

    /// Compiles `aces` (at most `MAX_CLASSIFIED_ACES`, at most `MAX_HOST_ACES` of them
    /// host ACEs: the config checks both; more are left out) under id `acl`, its host
    /// ACEs on the host set's bits from `host_base` up (those past the last bit left out:
    /// the agent picks a base that leaves them room).
    pub fn compile(acl: u32, aces: &[Ace], host_base: u32) -> CompiledAcl {
        let aces = &aces[..aces.len().min(MAX_CLASSIFIED_ACES)];
        let mut out = CompiledAcl::default();
        let host_indexes = aces.iter().enumerate().filter(|(_, a)| a.matches & MATCH_HOST != 0).map(|(i, _)| i as u32);
        for (ordinal, index) in (host_base as usize..MAX_HOST_ACES).zip(host_indexes) {
            out.hosts.push((AceKey { acl, index: ordinal as u32 }, index));
        }
        let host_aces = out.hosts.last().map_or(0, |(k, _)| k.index + 1);
        out.shape = AclShape { aces: aces.len() as u32, host_aces, digest: digest(aces) };
        out.aces = aces
            .chunks(ACES_PER_GROUP)
            .enumerate()
            .map(|(g, part)| {
                let mut group = AceGroup::default();
                group.aces[..part.len()].copy_from_slice(part);
                (AceKey { acl, index: g as u32 }, group)
            })
            .collect();
        // Per chunk, its three fields' ranges, which the summary merges.
        let summarized = out.shape.summarized();
        let mut fields: [Vec<range::Ranges>; 3] = Default::default();
        for (chunk, part) in aces.chunks(CHUNK_ACES).enumerate() {
            // Only the ACEs the bitmaps decide: no port maps, no host ACEs.
            let covered: Vec<(usize, &Ace)> =
                part.iter().enumerate().filter(|(_, a)| a.action != ACTION_PORTMAP && a.matches & MATCH_HOST == 0).collect();
            let chunk = chunk as u16;
            let [ip, port, proto] = &mut fields;
            ip.push(ip_ranges(&covered));
            port.push(port_ranges(&covered));
            if summarized {
                // Only the summary reads these; a chunk's own lookup is `proto_bits`.
                proto.push(proto_eidset_ranges(&covered));
            }
            out.ranges.extend(range::pages(acl, chunk, FIELD_IP, ip.last().unwrap()));
            proto_bits(&mut out, acl, chunk, &covered);
            out.ranges.extend(range::pages(acl, chunk, FIELD_PORT, port.last().unwrap()));
        }
        if summarized {
            for (field, tables) in [FIELD_IP, FIELD_PORT, FIELD_PROTO_EIDSET].into_iter().zip(&fields) {
                let tables: Vec<&[(u32, Bits)]> = tables.iter().map(Vec::as_slice).collect();
                out.summary.extend(summary::pages(acl, field, &summary::merge(&tables)));
            }
        }
        out
    }

    fn bits_of(covered: &[(usize, &Ace)], pred: impl Fn(&Ace) -> bool) -> Bits {
        let mut bits = Bits::default();
        for (i, a) in covered {
            if pred(a) {
                bits.set(*i);
            }
        }
        bits
    }

    /// The address ranges the chunk's prefixes cut, each with the ACEs whose prefix
    /// holds it and those with no address match.
    fn ip_ranges(covered: &[(usize, &Ace)]) -> range::Ranges {
        let spans: Vec<(u32, u32, usize)> = covered
            .iter()
            .filter(|(_, a)| a.matches & MATCH_IP != 0)
            .map(|(i, a)| {
                let len = a.prefix_len.min(32) as u32;
                let host_bits = u32::MAX.checked_shr(len).unwrap_or(0);
                let first = u32::from_be_bytes(a.prefix) & !host_bits;
                (first, first | host_bits, *i)
            })
            .collect();
        range::ranges(&spans, bits_of(covered, |a| a.matches & MATCH_IP == 0))
    }

    /// Per protocol an ACE of the chunk names, and for any other: the ACEs whose protocol
    /// it is or that name none; twice, with the eidset ACEs for a remote in the eidset and
    /// without them.
    fn proto_bits(out: &mut CompiledAcl, acl: u32, chunk: u16, covered: &[(usize, &Ace)]) {
        let protos: BTreeSet<u16> = covered.iter().filter(|(_, a)| a.matches & MATCH_PROTO != 0).map(|(_, a)| a.proto as u16).collect();
        for in_eidset in [0u32, 1] {
            let eid_ok = |a: &Ace| a.matches & MATCH_EIDSET == 0 || in_eidset == 1;
            for &proto in protos.iter().chain([PROTO_ANY].iter()) {
                let bits = bits_of(covered, |a| eid_ok(a) && (a.matches & MATCH_PROTO == 0 || a.proto as u16 == proto));
                out.proto.push((ProtoBitsKey { acl, chunk, proto, in_eidset }, bits));
            }
        }
    }

    /// The chunk's ACEs over the values of `summary::proto_value` (the protocol, and
    /// `IN_EIDSET` more for a remote in the eidset): as ranges, for the summary (the
    /// chunk's own lookup is `proto_bits`). An ACE's spans never overlap, as
    /// `range::ranges` needs.
    fn proto_eidset_ranges(covered: &[(usize, &Ace)]) -> range::Ranges {
        use summary::IN_EIDSET;
        let mut spans = Vec::new();
        for &(i, a) in covered {
            let eidset_only = a.matches & MATCH_EIDSET != 0;
            if a.matches & MATCH_PROTO != 0 {
                let p = a.proto as u32;
                if !eidset_only {
                    spans.push((p, p, i));
                }
                spans.push((IN_EIDSET + p, IN_EIDSET + p, i));
            } else if eidset_only {
                spans.push((IN_EIDSET, IN_EIDSET + 255, i));
            }
        }
        range::ranges(&spans, bits_of(covered, |a| a.matches & (MATCH_PROTO | MATCH_EIDSET) == 0))
    }

    /// The port ranges the chunk's ports cut (a port each), each with the ACEs naming
    /// it and those naming none.
    fn port_ranges(covered: &[(usize, &Ace)]) -> range::Ranges {
        let spans: Vec<(u32, u32, usize)> =
            covered.iter().filter(|(_, a)| a.matches & MATCH_FPORT != 0).map(|(i, a)| (a.fport as u32, a.fport as u32, *i)).collect();
        range::ranges(&spans, bits_of(covered, |a| a.matches & MATCH_FPORT == 0))
    }
}

#[cfg(test)]
mod tests;
